//! The flusher: the second half of group commit. The committer writes each group's log
//! entries and hands over the answers waiting on them; the flusher takes everything
//! handed over so far, runs one `fdatasync` per log segment written, and only then
//! answers. While one sync runs, the committer goes on with the next group, so applying
//! and syncing overlap instead of taking turns.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

use super::index::Mark;
use super::{JournalError, Outcome, Shared, Stages};

pub(super) type AppendReply = (
    oneshot::Sender<Result<Outcome, JournalError>>,
    Result<Outcome, JournalError>,
);
/// Answers a command other than an append once its writes are flushed; it is given the
/// flush's error, if any.
pub(super) type UpdateReply = Box<dyn FnOnce(Option<&JournalError>) + Send>;

/// What a group needs made durable.
pub(super) struct Sync {
    /// The log segments it wrote.
    pub files: Vec<Arc<File>>,
    /// Where the log ends after it.
    pub mark: Mark,
    /// Whether the index must be flushed too (a replay, a close).
    pub index: bool,
}

#[derive(Default)]
struct Waiting {
    appends: Vec<AppendReply>,
    updates: Vec<UpdateReply>,
    files: Vec<Arc<File>>,
    mark: Option<Mark>,
    index: bool,
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
    /// Whether a sync is under way.
    busy: Mutex<bool>,
    idle: Condvar,
}

impl FlushQueue {
    /// Hands over answers whose writes are complete; `close` asks for a last flush.
    pub(super) fn hand_over(
        &self,
        appends: &mut Vec<AppendReply>,
        updates: &mut Vec<UpdateReply>,
        sync: Sync,
        close: Option<oneshot::Sender<()>>,
    ) {
        let mut waiting = self.waiting.lock().expect("flush queue lock");
        waiting.appends.append(appends);
        waiting.updates.append(updates);
        for file in sync.files {
            if !waiting.files.iter().any(|f| Arc::ptr_eq(f, &file)) {
                waiting.files.push(file);
            }
        }
        waiting.mark = Some(sync.mark);
        waiting.index |= sync.index;
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
        *self.busy.lock().expect("busy lock") = true;
        std::mem::take(&mut *waiting)
    }

    fn done(&self) {
        *self.busy.lock().expect("busy lock") = false;
        self.idle.notify_all();
    }

    /// Waits until no sync is under way.
    pub(super) fn wait_idle(&self) {
        let busy = self.busy.lock().expect("busy lock");
        let _idle = self.idle.wait_while(busy, |busy| *busy).expect("busy lock");
    }
}

fn sync(group: &Waiting, db: &sled::Db) -> Result<(), String> {
    for file in &group.files {
        file.sync_data().map_err(|e| e.to_string())?;
    }
    if group.index {
        db.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub(super) fn run(
    queue: Arc<FlushQueue>,
    db: sled::Db,
    shared: Arc<Shared>,
    stages: Option<Stages>,
) {
    let mut failed_before = false;
    loop {
        let mut group = queue.take();
        // One fdatasync per segment for everything handed over; nobody is answered before
        // it. After one failure no later sync is trusted: the kernel may have dropped the
        // dirty pages that failed, so a later "success" would not cover them.
        let synced = if failed_before {
            Err("an earlier flush failed".to_string())
        } else if !shared.healthy.load(Ordering::Acquire) {
            // A write failed in the committer: this group may not all be on disk.
            Err("an earlier write failed".to_string())
        } else {
            let began = std::time::Instant::now();
            let synced = sync(&group, &db);
            if let Some(stages) = &stages {
                stages.sync_seconds.observe(began.elapsed().as_secs_f64());
            }
            synced
        };
        let failed = match synced {
            Ok(()) => {
                if let Some(mark) = group.mark {
                    *shared.durable.lock().expect("durable lock") = Some(mark);
                    // Wakes readers only when there is a new event to read, and only
                    // for events the indexer has written too.
                    shared.index.synced(mark.last_seq);
                }
                None
            }
            Err(e) => {
                failed_before = true;
                shared.fail(format!("a commit log sync failed: {e}"));
                tracing::error!(error = %e, "journal flush failed; refusing new events until writes work again");
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
        queue.done();
        if let Some(close) = group.close {
            let _ = close.send(());
            return;
        }
    }
}
