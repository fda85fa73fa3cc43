//! One budget for request body bytes held in memory across every connection and stream
//! (`server.max_inflight_bytes`). A body takes its bytes from the budget as they arrive,
//! chunk by chunk, and gives them back once its request is answered; while the budget
//! is spent, reading waits, so the sender's bytes stay in the kernel's socket buffer
//! rather than in hookgate's memory. Without it, many connections each holding an
//! unfinished body of `max_body` would take as much memory as they like.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

use super::ReceiveError;

#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
}

/// Bytes taken from the budget; given back when dropped.
pub struct Held(Option<OwnedSemaphorePermit>);

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        let bytes = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Budget {
            bytes: Arc::new(Semaphore::new(bytes)),
        }
    }

    /// Bytes not taken now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Takes `n` bytes if the budget has them now; `Ok(false)` if it has not. What is
    /// waiting for the budget is served first either way: the semaphore gives bytes
    /// given back to its queue before they count as available.
    fn take_now(&self, n: usize, held: &mut Held) -> Result<bool, ReceiveError> {
        if n == 0 {
            return Ok(true);
        }
        let n = u32::try_from(n).map_err(|_| ReceiveError::Busy)?;
        match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                held.add(permit);
                Ok(true)
            }
            Err(TryAcquireError::NoPermits) => Ok(false),
            Err(TryAcquireError::Closed) => Err(ReceiveError::Busy),
        }
    }

    /// Takes `n` bytes, waiting while the budget is spent, until `deadline`.
    async fn wait_for(
        &self,
        n: usize,
        held: &mut Held,
        deadline: Instant,
    ) -> Result<(), ReceiveError> {
        let n = u32::try_from(n).map_err(|_| ReceiveError::Busy)?;
        let permit = tokio::time::timeout_at(deadline, self.bytes.clone().acquire_many_owned(n))
            .await
            .map_err(|_| ReceiveError::Busy)?
            .map_err(|_| ReceiveError::Busy)?;
        held.add(permit);
        Ok(())
    }

    /// Reads a body of at most `limit` bytes into one buffer, taking its bytes from the
    /// budget as they arrive. A `Content-Length` over the limit is refused before
    /// anything is read. The caller keeps `held` until the request is answered. Past
    /// `deadline`, a sender still sending gets `BodyTimeout`, a body still waiting for
    /// the budget `Busy`.
    pub async fn read<B>(
        &self,
        declared: Option<u64>,
        body: B,
        limit: u64,
        held: &mut Held,
        deadline: Instant,
    ) -> Result<Bytes, ReceiveError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if declared.is_some_and(|n| n > limit) {
            return Err(ReceiveError::PayloadTooLarge { limit });
        }
        let mut body = std::pin::pin!(body);
        // Every body is copied once, into a buffer of its own: with a `Content-Length`,
        // one of that size, whose bytes are all taken from the budget before any of it
        // is read; a chunked body's grows as its bytes arrive and are taken. hyper hands
        // each chunk as a slice of its read buffer (8-16 KiB). A body kept as that slice
        // (one sent in one chunk was, until 2026-12-07) kept the whole buffer alive until
        // the journal had written it, so hyper took a new one for nearly every request:
        // fresh memory, which the kernel zeroes first (BENCHMARKS.md).
        // Bytes are taken at once when the budget has them; a wait for them (a timer
        // and a place in the queue) is boxed: it is rare, and every request's future
        // would otherwise hold room for it.
        if let Some(n) = declared {
            if !self.take_now(n as usize, held)? {
                Box::pin(self.wait_for(n as usize, held, deadline)).await?;
            }
        }
        let mut buf = BytesMut::new();
        let mut total = 0usize;
        loop {
            // What hyper has read already is taken without a timer (one per frame would
            // be made and dropped, a handle to tokio's clock cloned each time); a timer
            // bounds only a wait for the sender.
            let next = match body.frame().now_or_never() {
                Some(next) => next,
                None => tokio::time::timeout_at(deadline, body.frame())
                    .await
                    .map_err(|_| ReceiveError::BodyTimeout)?,
            };
            let Some(frame) = next else {
                break;
            };
            let frame = frame.map_err(|_| ReceiveError::BodyFailed)?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            total += chunk.len();
            if total as u64 > limit {
                return Err(ReceiveError::PayloadTooLarge { limit });
            }
            if declared.is_none_or(|n| total as u64 > n) && !self.take_now(chunk.len(), held)? {
                Box::pin(self.wait_for(chunk.len(), held, deadline)).await?;
            }
            if buf.capacity() == 0 {
                buf.reserve(declared.map_or(total, |n| n as usize).max(total));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

impl Held {
    pub fn none() -> Held {
        Held(None)
    }

    fn add(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(all) => all.merge(permit),
            None => self.0 = Some(permit),
        }
    }

    /// How many bytes it holds.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_body_takes_its_bytes_and_gives_them_back() {
        let budget = Budget::new(100);
        let mut held = Held::none();
        let body = budget
            .read(
                Some(5),
                Full::new(Bytes::from_static(b"hello")),
                64,
                &mut held,
                later(),
            )
            .await
            .unwrap();
        assert_eq!(body, "hello");
        assert_eq!((held.bytes(), budget.available()), (5, 95));
        drop(held);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn chunks_are_joined_and_the_limit_holds() {
        let budget = Budget::new(1000);
        let chunks = || {
            ["ab", "cd", "ef"].map(|c| {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                    c.as_bytes(),
                )))
            })
        };
        let mut held = Held::none();
        let body = StreamBody::new(futures_util::stream::iter(chunks()));
        let read = budget
            .read(None, body, 64, &mut held, later())
            .await
            .unwrap();
        assert_eq!(read, "abcdef");
        let mut held = Held::none();
        let body = StreamBody::new(futures_util::stream::iter(chunks()));
        assert_eq!(
            budget.read(None, body, 5, &mut held, later()).await,
            Err(ReceiveError::PayloadTooLarge { limit: 5 })
        );
        assert_eq!(
            budget
                .read(
                    Some(6),
                    Full::new(Bytes::new()),
                    5,
                    &mut Held::none(),
                    later()
                )
                .await,
            Err(ReceiveError::PayloadTooLarge { limit: 5 })
        );
    }

    #[tokio::test]
    async fn a_spent_budget_makes_readers_wait() {
        let budget = Budget::new(4);
        let mut first = Held::none();
        budget
            .read(
                None,
                Full::new(Bytes::from_static(b"1234")),
                64,
                &mut first,
                later(),
            )
            .await
            .unwrap();
        let waiting = budget.read(
            None,
            Full::new(Bytes::from_static(b"5")),
            64,
            Box::leak(Box::new(Held::none())),
            later(),
        );
        let waited = tokio::time::timeout(std::time::Duration::from_millis(100), waiting).await;
        assert!(waited.is_err(), "no bytes left: it waits");
        let soon = Instant::now() + std::time::Duration::from_millis(50);
        let mut held = Held::none();
        let body = Full::new(Bytes::from_static(b"5"));
        assert_eq!(
            budget.read(None, body, 64, &mut held, soon).await,
            Err(ReceiveError::Busy),
            "and past its deadline it is refused"
        );
        drop(first);
        assert_eq!(budget.available(), 4);
    }
}
