//! The flusher: the second half of group commit. The committer applies writes and hands
//! over the answers waiting on them; the flusher takes everything handed over so far,
//! calls one `flush` (sled: every write completed before the call is made durable), and
//! only then answers. While one flush runs, the committer goes on applying the next
//! group, so applying and syncing overlap instead of taking turns.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::{oneshot, watch};

use super::{JournalError, Outcome, Shared};

pub(super) type AppendReply = (
    oneshot::Sender<Result<Outcome, JournalError>>,
    Result<Outcome, JournalError>,
);
/// Answers a command other than an append once its writes are flushed; it is given the
/// flush's error, if any.
pub(super) type UpdateReply = Box<dyn FnOnce(Option<&JournalError>) + Send>;

#[derive(Default)]
struct Waiting {
    appends: Vec<AppendReply>,
    updates: Vec<UpdateReply>,
    last_seq: u64,
    close: Option<oneshot::Sender<()>>,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.appends.is_empty() && self.updates.is_empty() && self.close.is_none()
    }
}

#[derive(Default)]
pub(super) struct FlushQueue {
    waiting: Mutex<Waiting>,
    wake: Condvar,
}

impl FlushQueue {
    /// Hands over answers whose writes are complete; `close` asks for a last flush.
    pub(super) fn hand_over(
        &self,
        appends: &mut Vec<AppendReply>,
        updates: &mut Vec<UpdateReply>,
        last_seq: u64,
        close: Option<oneshot::Sender<()>>,
    ) {
        let mut waiting = self.waiting.lock().expect("flush queue lock");
        waiting.appends.append(appends);
        waiting.updates.append(updates);
        waiting.last_seq = last_seq;
        if close.is_some() {
            waiting.close = close;
        }
        self.wake.notify_one();
    }

    fn take(&self) -> Waiting {
        let mut waiting = self.waiting.lock().expect("flush queue lock");
        while waiting.is_empty() {
            waiting = self.wake.wait(waiting).expect("flush queue lock");
        }
        let last_seq = waiting.last_seq;
        std::mem::replace(
            &mut *waiting,
            Waiting {
                last_seq,
                ..Waiting::default()
            },
        )
    }
}

pub(super) fn run(
    queue: Arc<FlushQueue>,
    db: sled::Db,
    shared: Arc<Shared>,
    published: watch::Sender<u64>,
) {
    let mut failed_before = false;
    loop {
        let mut group = queue.take();
        // One fsync for everything handed over; nobody is answered before it. After one
        // failure no later flush is trusted: the kernel may have dropped the dirty pages
        // that failed, so a later "success" would not cover them.
        let flushed = if failed_before {
            Err(sled::Error::ReportableBug("an earlier flush failed".into()))
        } else {
            db.flush()
        };
        let failed = match flushed {
            Ok(_) => {
                published.send_replace(group.last_seq);
                None
            }
            Err(e) => {
                failed_before = true;
                shared.healthy.store(false, Ordering::Release);
                tracing::error!(error = %e, "journal flush failed; refusing new events");
                let failed = JournalError::Unwritable(format!("flush failed: {e}"));
                for (_, result) in group.appends.iter_mut() {
                    *result = Err(failed.clone());
                }
                Some(failed)
            }
        };
        for (reply, result) in group.appends {
            let _ = reply.send(result);
        }
        for answer in group.updates {
            answer(failed.as_ref());
        }
        if let Some(close) = group.close {
            let _ = close.send(());
            return;
        }
    }
}
