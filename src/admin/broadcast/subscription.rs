//! One client's place in the live stream: the ring's backlog and the broadcast channel
//! when it is close behind, its own pages of the journal when it is not, and the
//! overflow when it falls more than [`MAX_BEHIND`] behind while live.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use tokio::sync::broadcast;

use super::{join, read_page, Event, Filter, Shared, MAX_BEHIND};

pub(super) enum State {
    /// Joining again after reading from the journal.
    Join,
    /// Reading its own pages from the journal, up to `until`.
    Journal {
        until: u64,
        page: VecDeque<Arc<Event>>,
        page_end: u64,
    },
    /// Taking what the feed publishes, after the ring's `backlog`.
    Live {
        receiver: broadcast::Receiver<Arc<Event>>,
        backlog: VecDeque<Arc<Event>>,
    },
    Done,
}

/// What a subscription yields.
#[derive(Debug)]
pub enum Item {
    Event(Arc<Event>),
    /// The client fell more than [`MAX_BEHIND`] events behind: it should come back for
    /// the events after `resume_after`. The subscription has ended.
    Overflow {
        resume_after: u64,
    },
}

/// One client's place in the stream.
pub struct Subscription {
    shared: Arc<Shared>,
    filter: Filter,
    /// Every event up to here has been yielded or did not pass the filter.
    position: u64,
    state: State,
}

impl Subscription {
    /// Counted in `shared.clients` already, under the ring's lock.
    pub(super) fn new(
        shared: Arc<Shared>,
        filter: Filter,
        position: u64,
        state: State,
    ) -> Subscription {
        Subscription {
            shared,
            filter,
            position,
            state,
        }
    }

    /// The seq this subscription has passed: where a client resumes after.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// How many events the feed has published past this subscription's position.
    pub fn behind(&self) -> u64 {
        let ring = self
            .shared
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ring.published.saturating_sub(self.position)
    }

    /// The next event that passes the filter, an overflow, or `None` when the stream has
    /// ended (the gateway is stopping). Cancel-safe: nothing changes until a read is done.
    pub async fn next(&mut self) -> Result<Option<Item>, String> {
        loop {
            match &mut self.state {
                State::Done => return Ok(None),
                State::Join => {
                    let ring = self
                        .shared
                        .ring
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    self.state = join(&ring, &self.shared.sender, self.position);
                }
                State::Journal {
                    until,
                    page,
                    page_end,
                } => {
                    if let Some(event) = page.pop_front() {
                        self.position = event.seq;
                        return Ok(Some(Item::Event(event)));
                    }
                    self.position = self.position.max(*page_end);
                    if self.position >= *until {
                        self.state = State::Join;
                        continue;
                    }
                    let until = *until;
                    let (events, end) =
                        read_page(&self.shared.journal, &self.filter, self.position, until).await?;
                    self.state = State::Journal {
                        until,
                        page: events.into(),
                        page_end: end,
                    };
                }
                State::Live { receiver, backlog } => {
                    if receiver.len() > MAX_BEHIND {
                        return Ok(Some(self.overflow()));
                    }
                    let event = match backlog.pop_front() {
                        Some(event) => event,
                        None => match receiver.recv().await {
                            Ok(event) => event,
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                return Ok(Some(self.overflow()))
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                self.state = State::Done;
                                return Ok(None);
                            }
                        },
                    };
                    if event.seq <= self.position {
                        continue;
                    }
                    self.position = event.seq;
                    if self.filter.matches(&event) {
                        return Ok(Some(Item::Event(event)));
                    }
                }
            }
        }
    }

    fn overflow(&mut self) -> Item {
        self.state = State::Done;
        Item::Overflow {
            resume_after: self.position,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::AcqRel);
    }
}
