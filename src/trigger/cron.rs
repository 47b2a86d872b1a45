//! The cron trigger: fires job notes on schedule by writing inbound notes.
//!
//! Each job has an *anchor*: the scheduled time of its last fire
//! (`last_run_at`), or, for a job that never ran, the moment it was first
//! seen — a job that never ran has missed nothing. At every tick the latest
//! scheduled time in `(anchor, now]` is due; missed runs (the daemon was
//! down, the machine slept) collapse into that one fire with `catch_up:
//! once`, or are recorded as skipped with `catch_up: skip`.
//!
//! A fire writes its inbound note with create-if-absent at a path derived
//! from the job and the scheduled time, then stamps the job's
//! `last_run_at`/`last_status`. A crash between the two is harmless: the
//! restart finds the note already there and only stamps. While the previous
//! fire's message is still queued or running, a fire is skipped and
//! recorded. The clock is a parameter ([`Scheduler::tick`]), so tests drive
//! time without sleeping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::job::{CatchUp, Job};
use crate::message::{SendOptions, inbound_text};
use crate::note::{FmValue, edit_front_matter};
use crate::turn::now_rfc3339;

/// A late timer within this is a normal fire, even with `catch_up: skip`.
pub const LATE_GRACE: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

/// The longest the scheduler sleeps before looking at the wall clock again
/// (monotonic timers do not advance while a machine is suspended).
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// What a tick did for one job (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// An inbound note was written (or was already there).
    Fired {
        job: String,
        scheduled: DateTime<Utc>,
        message: String,
    },
    /// Recorded as skipped, with the reason.
    Skipped {
        job: String,
        scheduled: DateTime<Utc>,
        reason: String,
    },
    /// The message could not be written (a full or failing disk): the
    /// scheduled time stays due and is fired on a later try.
    Failed {
        job: String,
        scheduled: DateTime<Utc>,
        reason: String,
    },
}

/// The scheduler's memory: each job's anchor, and the jobs whose last fire
/// could not be written (a full or failing disk), held until their next try.
#[derive(Debug, Default)]
pub struct Scheduler {
    anchors: HashMap<String, DateTime<Utc>>,
    /// Job → (when to try the fire again, failed tries so far).
    held: HashMap<String, (DateTime<Utc>, u32)>,
}

/// A fire that could not be written is tried again after this, doubling
/// each time up to [`FIRE_RETRY_MAX`]; its scheduled time is kept, so the
/// fire is late, never lost.
pub const FIRE_RETRY_BASE: chrono::TimeDelta = chrono::TimeDelta::seconds(10);
pub const FIRE_RETRY_MAX: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    fn anchor(&mut self, job: &Job, now: DateTime<Utc>) -> DateTime<Utc> {
        let a = self
            .anchors
            .entry(job.path.clone())
            .or_insert_with(|| job.last_run_at.unwrap_or(now));
        if let Some(l) = job.last_run_at
            && l > *a
        {
            *a = l;
        }
        *a
    }

    /// When the scheduler next has something to do, if any job is enabled.
    pub fn next_due(&mut self, jobs: &[Arc<Job>], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        jobs.iter()
            .filter(|j| j.enabled)
            .filter_map(|j| {
                let a = self.anchor(j, now);
                let next = j.next_after(a)?;
                Some(match self.held.get(&j.path) {
                    Some((until, _)) => next.max(*until),
                    None => next,
                })
            })
            .min()
    }

    /// Fires every job that is due at `now`. Does the I/O through the
    /// engine (durable writes, index updates).
    pub fn tick(&mut self, engine: &Engine, now: DateTime<Utc>) -> Vec<Fired> {
        let jobs: Vec<Arc<Job>> = engine.with_index(|ix| ix.jobs().cloned().collect());
        self.anchors
            .retain(|p, _| jobs.iter().any(|j| &j.path == p));
        self.held.retain(|p, _| jobs.iter().any(|j| &j.path == p));
        let mut out = Vec::new();
        // A disabled job misses nothing: while it is off its anchor moves
        // with the clock, so enabling it again does not fire a catch-up.
        for job in jobs.iter().filter(|j| !j.enabled) {
            self.anchors.insert(job.path.clone(), now);
        }
        for job in jobs.iter().filter(|j| j.enabled) {
            if self
                .held
                .get(&job.path)
                .is_some_and(|(until, _)| *until > now)
            {
                continue;
            }
            let anchor = self.anchor(job, now);
            let Some(due) = job.latest_between(anchor, now) else {
                continue;
            };
            self.anchors.insert(job.path.clone(), due);
            let late = now.signed_duration_since(due) > LATE_GRACE;
            let r = if late && job.catch_up == CatchUp::Skip {
                let reason = "skipped: missed while vaultrunner was not running (catch_up: skip)"
                    .to_string();
                stamp(engine, job, due, &reason);
                Fired::Skipped {
                    job: job.path.clone(),
                    scheduled: due,
                    reason,
                }
            } else if let Some(prev) = previous_still_open(engine, job) {
                let reason =
                    format!("skipped: the previous run [[{prev}]] is still queued or running");
                stamp(engine, job, due, &reason);
                Fired::Skipped {
                    job: job.path.clone(),
                    scheduled: due,
                    reason,
                }
            } else {
                let r = fire(engine, job, due);
                if let Fired::Failed { .. } = r {
                    // Not written: the time stays due, tried again later.
                    self.anchors.insert(job.path.clone(), anchor);
                    let tries = self.held.get(&job.path).map_or(0, |h| h.1) + 1;
                    let wait = FIRE_RETRY_BASE
                        .checked_mul(1 << tries.saturating_sub(1).min(8))
                        .unwrap_or(FIRE_RETRY_MAX)
                        .min(FIRE_RETRY_MAX);
                    let until = now.checked_add_signed(wait).unwrap_or(now);
                    self.held.insert(job.path.clone(), (until, tries));
                } else {
                    self.held.remove(&job.path);
                }
                r
            };
            match &r {
                Fired::Fired { message, .. } => tracing::info!("{}: fired {}", job.path, message),
                Fired::Skipped { reason, .. } => tracing::info!("{}: {reason}", job.path),
                Fired::Failed { reason, .. } => tracing::error!("{}: {reason}", job.path),
            }
            out.push(r);
        }
        out
    }
}

/// The job's previous fire, if its message is still queued or running.
/// Looked up by sender in the index, not at the anchor's path: after a
/// skip the anchor is the skipped time, which has no message.
fn previous_still_open(engine: &Engine, job: &Job) -> Option<String> {
    let sender = format!("job:{}", job.path);
    engine.with_index(|ix| ix.open_message_from(&sender).cloned())
}

fn fire(engine: &Engine, job: &Job, due: DateTime<Utc>) -> Fired {
    let path = job.fire_path(due);
    let opts = SendOptions {
        subject: job.subject.clone(),
        sender: Some(format!("job:{}", job.path)),
        ..Default::default()
    };
    let text = inbound_text(&job.agent, &job.body, &opts);
    match engine.create_note(&path, &text) {
        Ok(_) => {
            stamp(engine, job, due, "fired");
            Fired::Fired {
                job: job.path.clone(),
                scheduled: due,
                message: path,
            }
        }
        Err(e) => {
            let reason = format!("error: could not write the message ({e}); trying again");
            // Only the status: `last_run_at` stays, so the time is still
            // due after a restart too.
            stamp_status(engine, job, &reason);
            Fired::Failed {
                job: job.path.clone(),
                scheduled: due,
                reason,
            }
        }
    }
}

/// Records `last_run_at` and `last_status` on the job note, in place.
fn stamp(engine: &Engine, job: &Job, due: DateTime<Utc>, status: &str) {
    edit_job(
        engine,
        job,
        &[
            ("last_run_at", FmValue::Str(ts(due))),
            ("last_status", FmValue::Str(status.to_string())),
        ],
    );
}

/// Records `last_status` alone.
fn stamp_status(engine: &Engine, job: &Job, status: &str) {
    edit_job(
        engine,
        job,
        &[("last_status", FmValue::Str(status.to_string()))],
    );
}

fn edit_job(engine: &Engine, job: &Job, edits: &[(&str, FmValue)]) {
    let vault = engine.vault();
    let Ok((text, _)) = vault.read(&job.path) else {
        return;
    };
    match edit_front_matter(&text, edits) {
        Ok((edited, _)) if edited != text => {
            if let Err(e) = engine.write_note(&job.path, &edited) {
                tracing::error!("{}: could not record the run: {e}", job.path);
            }
        }
        Ok(_) => {}
        Err(e) => tracing::error!("{}: could not record the run: {e}", job.path),
    }
}

/// Runs the scheduler until `cancel`. Sleeps until the next fire (at most
/// [`MAX_SLEEP`]), or until jobs change; with no enabled job it only waits
/// for a change.
pub async fn run(engine: Arc<Engine>, cancel: CancellationToken) {
    let mut sched = Scheduler::new();
    tracing::debug!("cron scheduler started at {}", now_rfc3339());
    loop {
        let changed = engine.jobs_changed();
        let now = Utc::now();
        let e = engine.clone();
        let fired = tokio::task::spawn_blocking(move || {
            let r = sched.tick(&e, now);
            (sched, r)
        })
        .await;
        let Ok((s, _)) = fired else { return };
        sched = s;
        let jobs: Vec<Arc<Job>> = engine.with_index(|ix| ix.jobs().cloned().collect());
        let wait = sched.next_due(&jobs, Utc::now()).map(|t| {
            t.signed_duration_since(Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(MAX_SLEEP)
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed => {}
            _ = async {
                match wait {
                    Some(w) => tokio::time::sleep(w.saturating_add(Duration::from_millis(5))).await,
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
}
