//! The flusher: the second half of group commit. The committer writes each group's log
//! entries; the flusher runs one `fdatasync` per log segment written and only then
//! answers. It runs on the committer's thread: the committer waits for each sync before
//! it takes the next group (what arrives meanwhile is taken as one group once the sync
//! ends), so a thread of its own would add two wake-ups per group and overlap nothing.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::index::Mark;
use super::store;
use super::watchdog::Watch;
use super::{JournalError, Outcome, Shared, Stages};

pub(super) type AppendResult = Result<Outcome, JournalError>;
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

pub(super) struct Flusher {
    db: store::Db,
    shared: Arc<Shared>,
    stages: Option<Stages>,
    /// A sync failed: no later one is trusted, as the kernel may have dropped the dirty
    /// pages that failed, so a later "success" would not cover them.
    failed_before: bool,
}

impl Flusher {
    pub(super) fn new(db: store::Db, shared: Arc<Shared>, stages: Option<Stages>) -> Flusher {
        Flusher {
            db,
            shared,
            stages,
            failed_before: false,
        }
    }

    /// One `fdatasync` per segment the group wrote (and an index flush if it asks for
    /// one); nobody is answered before it. Then the group's answers, the appends' with
    /// the flush's error if it failed.
    pub(super) fn flush(
        &mut self,
        appends: &mut Vec<AppendResult>,
        watch: &Watch,
        updates: &mut Vec<UpdateReply>,
        group: Sync,
    ) {
        let synced = if self.failed_before {
            Err("an earlier flush failed".to_string())
        } else if !self.shared.healthy.load(Ordering::Acquire) {
            // A write failed in the committer: this group may not all be on disk.
            Err("an earlier write failed".to_string())
        } else {
            let began = std::time::Instant::now();
            let synced = self.sync(&group);
            if let Some(stages) = &self.stages {
                stages.sync_seconds.observe(began.elapsed().as_secs_f64());
            }
            synced
        };
        let failed = match synced {
            Ok(()) => {
                *self.shared.durable.lock().expect("durable lock") = Some(group.mark);
                // Wakes readers only when there is a new event to read, and only for
                // events the indexer has written too.
                self.shared.index.synced(group.mark.last_seq);
                None
            }
            Err(e) => {
                self.failed_before = true;
                self.shared.fail(format!("a commit log sync failed: {e}"));
                tracing::error!(error = %e, "journal flush failed; refusing new events until writes work again");
                let failed = JournalError::Unwritable(format!("flush failed: {e}"));
                for result in appends.iter_mut() {
                    *result = Err(failed.clone());
                }
                Some(failed)
            }
        };
        watch.answer(appends.drain(..));
        for answer in updates.drain(..) {
            answer(failed.as_ref());
        }
    }

    fn sync(&self, group: &Sync) -> Result<(), String> {
        for file in &group.files {
            file.sync_data().map_err(|e| e.to_string())?;
        }
        if group.index {
            self.db.flush().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
