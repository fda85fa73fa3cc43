//! `hookgate-loadtest powercut`: power cuts with a real kernel. A QEMU guest runs
//! `hookgate serve` with its journal on an ext4 virtio disk; the host drives signed load
//! (the `run` code), kills QEMU with SIGKILL (the power cut: the guest's page cache is
//! gone), boots again on the same image and checks with the `verify` code that every
//! event acknowledged before the cut is in the journal and is still answered
//! `duplicate`. With `--broker`, RabbitMQ stays on the host and the queue is checked too.

mod guest;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::run::{self, Fate, Plan, Rng};
use crate::verify::{self, Counts, Found, Sent};
use guest::{Accel, Guest, Kit, Machine};

/// The admin token of the guest (its admin API listens on the guest's eth0, so it needs
/// one; only the host's loopback reaches it).
const TOKEN: &str = "powercut-admin-token-0123456789";
const AMQP_HOST: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The guest's `journal.segment_size`: small, so that segments are closed and started
/// in every cycle, not once in 64 MiB (the code that rotates is the same at any size).
const SEGMENT_BYTES: u64 = 1024 * 1024;
/// The index is flushed every 200 ms (`FLUSH_EVERY` in src/journal/index.rs).
const FLUSH_MS: u64 = 200;
/// The body size of the load.
const BODY: usize = 1600;
/// What one event of `BODY` bytes takes in a segment, a little less than the 1,850 or so
/// measured, so that the load goes past the boundary: the entry's header, the
/// request's headers and the summary besides the body.
const ENTRY_BYTES: u64 = 1_800;
/// `journal.retention` of the compaction moment's guest: events older than this are
/// removed while the load runs (`journal.compact_every` is 1 s there).
const SHORT_RETENTION: Duration = Duration::from_secs(5);
/// How much the guest's clock may run ahead of the host's: an event acknowledged less
/// than `SHORT_RETENTION - CLOCK_SLACK` before the cut must be found after it.
const CLOCK_SLACK: Duration = Duration::from_secs(2);

pub struct Options {
    pub hookgate: PathBuf,
    pub cycles: u32,
    pub connections: usize,
    pub broker: bool,
    /// Only these moments (all of them, in turn, when empty).
    pub moments: Vec<Moment>,
    /// Skip KVM even where `/dev/kvm` exists.
    pub tcg: bool,
}

/// Where in the gateway's work a cut is aimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Moment {
    /// Anywhere under load with some duplicates.
    Random,
    /// While a segment is closed and the next one started: events up to the boundary of
    /// the newest segment (its size read from the guest's boot listing), then the cut.
    Rotation,
    /// During the index's background flush (every 200 ms under load): after 2 s of load,
    /// at a random phase of the flush period.
    Flush,
    /// In a burst of duplicates: 90% of requests repeat an accepted id.
    Duplicates,
    /// While compaction removes events and segments: the guest is booted with a 5 s
    /// retention and compaction every second, so that every earlier event and the load's
    /// own older ones are being removed (and their segments deleted) when the cut comes.
    Compaction,
}

/// The default moments, in turn.
const ALL: [Moment; 5] = [
    Moment::Random,
    Moment::Duplicates,
    Moment::Flush,
    Moment::Rotation,
    Moment::Compaction,
];

#[derive(Default)]
pub struct Outcome {
    pub accel: Option<Accel>,
    pub cache: &'static str,
    pub cycles: u32,
    pub journal: Counts,
    pub queue: Option<Counts>,
    /// Acknowledged ids answered anything but `duplicate` after a cut.
    pub forgotten: u64,
    /// Acknowledged events that compaction removed, as the short retention allowed (they
    /// are no longer looked for in the journal; their ids still must be `duplicate`).
    pub compacted: u64,
    /// From each boot's start (QEMU spawned) to the first answer of `/healthz`.
    pub boots: Vec<Duration>,
    /// Boots of the emulated machine that hung before hookgate answered and were cut and
    /// started again (console files kept); a hang is not a loss, a loss is checked after.
    pub hung_boots: u32,
    /// From `hookgate serve`'s start in the guest to the first answer of `/healthz`.
    pub recoveries: Vec<Duration>,
    /// Whether a run stopped early on a failure (the report says why).
    pub failure: Option<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
            && self.forgotten == 0
            && self.journal.ok()
            && self.queue.is_none_or(|q| q.ok())
    }

    pub fn to_json(&self) -> serde_json::Value {
        let ms = |v: &[Duration]| -> Vec<f64> {
            v.iter()
                .map(|d| (d.as_secs_f64() * 1000.0).round())
                .collect()
        };
        serde_json::json!({
            "ok": self.ok(),
            "accel": self.accel.map(Accel::name),
            "cache": self.cache,
            "cycles": self.cycles,
            "acked": self.journal.acked,
            "journal": self.journal.to_json(),
            "queue": self.queue.map(Counts::to_json),
            "forgotten_duplicates": self.forgotten,
            "compacted": self.compacted,
            "boot_ms": ms(&self.boots),
            "hung_boots": self.hung_boots,
            "recovery_ms": ms(&self.recoveries),
            "recovery_ms_p50": percentile(&self.recoveries, 0.5),
            "recovery_ms_max": percentile(&self.recoveries, 1.0),
            "failure": self.failure,
        })
    }

    pub fn print(&self) {
        println!(
            "{} power cuts ({}, cache={}), {} events acknowledged",
            self.cycles,
            self.accel.map_or("no guest", Accel::name),
            self.cache,
            self.journal.acked
        );
        println!("journal: {}", self.journal);
        if let Some(queue) = self.queue {
            println!("queue:   {queue}");
        }
        println!(
            "acknowledged ids no longer answered `duplicate`: {}",
            self.forgotten
        );
        println!(
            "acknowledged events removed by the compaction moment's retention: {}",
            self.compacted
        );
        println!(
            "boots that hung and were cut and started again: {}",
            self.hung_boots
        );
        println!(
            "recovery (hookgate start to /healthz), ms: p50 {:.0}, max {:.0}; boot to /healthz p50 {:.0}",
            percentile(&self.recoveries, 0.5),
            percentile(&self.recoveries, 1.0),
            percentile(&self.boots, 0.5)
        );
        if let Some(failure) = &self.failure {
            println!("FAILED: {failure}");
        }
    }
}

fn percentile(values: &[Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return 0.0;
    }
    ms[((ms.len() - 1) as f64 * q).round() as usize].round()
}

/// Two free loopback ports for QEMU's forwards: both listeners are held until both
/// ports are known, so the kernel cannot hand out the same one twice.
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let first = std::net::TcpListener::bind("127.0.0.1:0")?;
    let second = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((first.local_addr()?.port(), second.local_addr()?.port()))
}

/// The guest's config: ingest and admin on all of the guest's addresses, the journal on
/// the virtio disk with small segments and, with a broker, RabbitMQ through QEMU's
/// guestfwd. With `compact`, the compaction moment's short retention.
fn config(broker: Option<&(String, String)>, compact: bool) -> String {
    let sources = include_str!("../../load.toml");
    let sources = &sources[sources.find("[[sources]]").expect("load.toml has sources")..];
    let broker = match broker {
        Some((exchange, queue)) => format!(
            "[broker]\nurl = \"amqp://guest:guest@10.0.2.100:5672/%2f\"\nexchange = \"{exchange}\"\n\
             retry = {{ initial = \"100ms\", max = \"1s\" }}\n\n\
             [[broker.queues]]\nname = \"{queue}\"\nbindings = [\"#\"]\nkind = \"quorum\"\n"
        ),
        None => String::new(),
    };
    let compaction = if compact {
        format!(
            "retention = \"{}s\"\ncompact_every = \"1s\"\n",
            SHORT_RETENTION.as_secs()
        )
    } else {
        String::new()
    };
    format!(
        "[server]\nlisten = \"0.0.0.0:8080\"\n\n[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"{TOKEN}\"\n\n\
         [journal]\npath = \"/mnt/journal\"\nmax_backlog = 100000000\nsegment_size = \"{}KiB\"\n{compaction}\n\
         {broker}\n{sources}",
        SEGMENT_BYTES / 1024
    )
}

/// Everything one run keeps between cycles.
struct Run {
    machine: Machine,
    accel: Accel,
    admin: String,
    ingest: String,
    sources: Vec<Arc<hookgate::source::Source>>,
    names: Vec<String>,
    sent: Sent,
    /// Acknowledged events the compaction moment's retention may have removed: those
    /// missing at the next check go to `compacted`.
    expirable: HashSet<(String, String)>,
    /// Acknowledged events compaction removed: no longer looked for in the journal (the
    /// queue still must have them), and their ids must still be `duplicate`.
    compacted: Vec<(String, String)>,
    gone: HashSet<(String, String)>,
    queued: Found,
    /// The broker's queue, with `--broker`.
    queue: Option<String>,
    boots: u32,
    outcome: Outcome,
}

pub async fn run(options: Options) -> anyhow::Result<Outcome> {
    let kit = Kit::find()?;
    anyhow::ensure!(
        !options.broker || guest::which("socat").is_some(),
        "--broker needs socat (Debian: socat) to carry the guest's broker connections"
    );
    let stamp = run::stamp();
    let dir =
        std::env::temp_dir().join(format!("hookgate-powercut-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let names = options.broker.then(|| {
        let prefix = format!("hookgate-powercut.{}.{stamp}", std::process::id());
        (format!("{prefix}.x"), format!("{prefix}.q"))
    });
    let text = config(names.as_ref(), false);
    let host_config = dir.join("hookgate.toml");
    std::fs::write(&host_config, &text)?;
    let (_, sources) = run::sources(&host_config, &[])?;
    let configs = [("default", text), ("compact", config(names.as_ref(), true))];
    let initramfs = guest::initramfs(&kit, &options.hookgate, &configs, &dir)?;
    let disk = dir.join("disk.img");
    guest::disk(&disk, 4 << 30)?;
    let (ingest_port, admin_port) = free_ports()?;
    let mut state = Run {
        machine: Machine {
            qemu: kit.qemu.clone(),
            kernel: kit.kernel.clone(),
            initramfs,
            disk,
            ingest_port,
            admin_port,
            broker: options.broker,
            cache: "none",
            dir: dir.clone(),
        },
        accel: if options.tcg || !std::path::Path::new("/dev/kvm").exists() {
            Accel::Tcg
        } else {
            Accel::Kvm
        },
        admin: format!("http://127.0.0.1:{admin_port}"),
        ingest: format!("127.0.0.1:{ingest_port}"),
        names: sources.iter().map(|s| s.name.clone()).collect(),
        sources,
        sent: Sent::new(),
        expirable: HashSet::new(),
        compacted: Vec::new(),
        gone: HashSet::new(),
        queued: Found::new(),
        queue: names.as_ref().map(|(_, q)| q.clone()),
        boots: 0,
        outcome: Outcome::default(),
    };
    eprintln!("powercut: guest files in {}", dir.display());
    // On SIGINT or SIGTERM the cycles' future is dropped, and with it the guest (its
    // Drop kills QEMU): no guest outlives the harness.
    let result = tokio::select! {
        result = cycles(&mut state, &options, stamp) => result,
        signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}")),
    };
    if let Some((exchange, queue)) = &names {
        delete_broker_names(exchange, queue).await;
    }
    let mut outcome = std::mem::take(&mut state.outcome);
    outcome.accel = Some(state.accel);
    outcome.cache = state.machine.cache;
    if let Err(e) = result {
        outcome.failure = Some(format!("{e:#}"));
    }
    if outcome.ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!(
            "powercut: consoles and disk image kept in {}",
            dir.display()
        );
    }
    Ok(outcome)
}

async fn cycles(state: &mut Run, options: &Options, stamp: u128) -> anyhow::Result<()> {
    let mut rng = Rng::seeded();
    let mut guest = boot(state, "default").await?;
    for cycle in 0..options.cycles {
        let moments: &[Moment] = if options.moments.is_empty() {
            &ALL
        } else {
            &options.moments
        };
        let moment = moments[cycle as usize % moments.len()];
        if moment == Moment::Compaction {
            // Every event so far is older than the short retention by the time this
            // guest is up: compaction is busy removing them when the load starts.
            guest.cut()?;
            state.expirable.extend(
                state
                    .sent
                    .iter()
                    .filter(|(_, fate)| **fate == Fate::Acked)
                    .map(|(key, _)| key.clone()),
            );
            guest = boot(state, "compact").await?;
        }
        let prefix = format!("pc{stamp}c{cycle}");
        let began = Instant::now();
        let (report, cut) =
            load_and_cut(state, &mut guest, moment, &prefix, options, &mut rng).await?;
        let wait = cut.duration_since(began).as_millis();
        let acked: Vec<(String, String)> = report
            .tally
            .ids
            .iter()
            .filter(|(_, _, f)| *f == Fate::Acked)
            .map(|(s, id, _)| (s.clone(), id.clone()))
            .collect();
        if moment == Moment::Compaction {
            // Only the events sent within the retention (less the clock's slack) before
            // the cut must still be there: a gateway received them no earlier.
            let recent: HashSet<&str> = report
                .tally
                .sent_at
                .iter()
                .filter(|(_, at)| cut.duration_since(*at) < SHORT_RETENTION - CLOCK_SLACK)
                .map(|(id, _)| id.as_str())
                .collect();
            state.expirable.extend(
                acked
                    .iter()
                    .filter(|(_, id)| !recent.contains(id.as_str()))
                    .cloned(),
            );
        }
        for (source, id, fate) in report.tally.ids {
            state.sent.insert((source, id), fate);
        }
        guest = boot(state, "default").await?;
        check(state, &guest, &acked, &mut rng).await?;
        state.outcome.cycles = cycle + 1;
        eprintln!(
            "cycle {} ({moment:?}): cut after {wait} ms; {} sent, {} acknowledged; recovery {:.0} ms; so far {}{}",
            cycle + 1,
            report.tally.sent,
            acked.len(),
            state.outcome.recoveries.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            state.outcome.journal,
            state.outcome.queue.map(|q| format!("; queue {q}")).unwrap_or_default(),
        );
        anyhow::ensure!(
            state.outcome.journal.ok()
                && state.outcome.forgotten == 0
                && state.outcome.queue.is_none_or(|q| q.ok()),
            "cycle {}: acknowledged events lost\n{}",
            cycle + 1,
            guest.tail(60)
        );
    }
    let _ = guest.cut();
    Ok(())
}

/// How many times in a row a boot may hang before the run stops.
const HUNG_BOOTS: u32 = 3;

/// Boots the guest and waits for `/healthz`; the first boot falls back from KVM to TCG
/// if a KVM guest does not come up, and from `cache=none` to `writeback` if the host's
/// filesystem refuses O_DIRECT. A later boot that hangs before init starts hookgate (an
/// emulated kernel on a starved host now and then never gets past its start) is cut and
/// started again, as one would power-cycle a machine that hung, up to `HUNG_BOOTS` times
/// in a row.
async fn boot(state: &mut Run, config: &str) -> anyhow::Result<Guest> {
    let mut hung = 0;
    loop {
        state.boots += 1;
        let mut guest = state.machine.boot(state.accel, config, state.boots)?;
        let limit = match state.accel {
            // A KVM guest that works answers in a few seconds; one that hits "emulation
            // failure" (nested virtualisation) hangs silently.
            Accel::Kvm if state.boots == 1 => Duration::from_secs(15),
            // An emulated guest boots in 10-15 s here, and in up to 75 s on a busy
            // machine.
            _ => Duration::from_secs(180),
        };
        match healthy(state, &mut guest, limit).await {
            Ok(()) => return Ok(guest),
            Err(e) if state.boots == 1 => {
                let qemu = guest.qemu_text();
                drop(guest);
                if state.machine.cache == "none"
                    && (qemu.contains("O_DIRECT") || qemu.contains("cache"))
                {
                    eprintln!("powercut: the host refuses O_DIRECT on the image; cache=writeback");
                    state.machine.cache = "writeback";
                } else if state.accel == Accel::Kvm {
                    eprintln!("powercut: a KVM guest did not come up ({e:#}); software emulation (tcg) instead");
                    state.accel = Accel::Tcg;
                } else {
                    return Err(e);
                }
            }
            // Only a machine that never got as far as starting hookgate: a gateway that
            // started and did not answer is a failure of the run.
            Err(e)
                if hung + 1 < HUNG_BOOTS
                    && guest.exited().is_none()
                    && !guest.console_text().contains("powercut: hookgate starting") =>
            {
                hung += 1;
                state.outcome.hung_boots += 1;
                eprintln!(
                    "powercut: boot {} hung ({e:#}); cutting it and booting again",
                    state.boots
                );
                drop(guest);
            }
            Err(e) => return Err(e),
        }
    }
}

async fn healthy(state: &mut Run, guest: &mut Guest, limit: Duration) -> anyhow::Result<()> {
    let mut serving: Option<Instant> = None;
    loop {
        if serving.is_none() && guest.console_text().contains("powercut: hookgate starting") {
            serving = Some(Instant::now());
        }
        // QEMU accepts a forwarded connection before the guest listens and holds it, so
        // each try is cut short: the console is read between tries.
        let url = format!("{}/healthz", state.admin);
        let answer =
            tokio::time::timeout(Duration::from_millis(500), hookgate::cli::client::get(&url))
                .await;
        if let Ok(Ok(reply)) = answer {
            if reply.status.is_success() {
                let boot = guest.uptime();
                state.outcome.boots.push(boot);
                state
                    .outcome
                    .recoveries
                    .push(serving.map_or(boot, |s| s.elapsed()));
                return Ok(());
            }
        }
        if let Some(status) = guest.exited() {
            anyhow::bail!("QEMU exited while booting: {status}\n{}", guest.tail(40));
        }
        anyhow::ensure!(
            !guest.qemu_text().contains("KVM internal error"),
            "KVM internal error\n{}",
            guest.tail(10)
        );
        anyhow::ensure!(
            guest.uptime() < limit,
            "hookgate did not answer /healthz within {} s\n{}",
            limit.as_secs(),
            guest.tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drives load at the guest and cuts its power at the moment's time; the load's report
/// and when the cut came.
async fn load_and_cut(
    state: &mut Run,
    guest: &mut Guest,
    moment: Moment,
    prefix: &str,
    options: &Options,
    rng: &mut Rng,
) -> anyhow::Result<(run::Report, Instant)> {
    let mut plan = Plan {
        addr: state.ingest.clone(),
        sources: state.sources.clone(),
        connections: options.connections,
        rate: None,
        duration: None,
        count: None,
        duplicates: 0.2,
        size: BODY,
        prefix: prefix.to_string(),
        tls: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let cut;
    let report = match moment {
        Moment::Rotation => {
            // Events up to the newest segment's end and a few past it; the cut comes as
            // the last of them is answered, while the segment is being changed.
            let newest = newest_segment_bytes(&guest.console_text());
            let left = SEGMENT_BYTES.saturating_sub(newest);
            plan.duplicates = 0.0;
            let count = left / ENTRY_BYTES + rng.next() % 8;
            eprintln!(
                "powercut: the newest segment holds {newest} bytes: {count} events to its end and past it"
            );
            plan.count = Some(count);
            plan.connections = options.connections.min(4);
            let load = tokio::spawn(run::run(plan, stop.clone()));
            let deadline = Instant::now() + Duration::from_secs(120);
            while !load.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            guest.cut()?;
            cut = Instant::now();
            stop.store(true, Ordering::Release);
            load.await.context("the load task failed")?
        }
        _ => {
            let wait = match moment {
                // Some load first, then a cut at a random phase of the flush period.
                Moment::Flush => 2000 + rng.next() % FLUSH_MS,
                Moment::Duplicates => {
                    plan.duplicates = 0.9;
                    2000 + rng.next() % 4000
                }
                // Past the short retention, so that the load's own first events are
                // being removed too.
                Moment::Compaction => 6000 + rng.next() % 4000,
                _ => 1000 + rng.next() % 5000,
            };
            let load = tokio::spawn(run::run(plan, stop.clone()));
            tokio::time::sleep(Duration::from_millis(wait)).await;
            guest.cut()?;
            cut = Instant::now();
            // Requests on the wire get no answer: they are `unknown`, not acknowledged.
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.store(true, Ordering::Release);
            load.await.context("the load task failed")?
        }
    };
    Ok((report, cut))
}

/// How much the newest segment holds after this boot: the offset in hookgate's
/// `commit log continues` line, or else the size of the newest `.seg` file in the boot's
/// `ls -l` of the journal. (A segment that was a retired file written over is longer on
/// disk than what it holds until hookgate has opened it.)
fn newest_segment_bytes(console: &str) -> u64 {
    let boot = console.rsplit("powercut: segments").next().unwrap_or("");
    let logged = boot
        .lines()
        .rfind(|line| line.contains("commit log continues"))
        .and_then(|line| number_after(line, "offset"));
    logged.unwrap_or_else(|| {
        boot.lines()
            .filter(|line| line.trim_end().ends_with(".seg"))
            .filter_map(|line| line.split_whitespace().nth(4)?.parse::<u64>().ok())
            .next_back()
            .unwrap_or(0)
    })
}

/// The number in `name=N` in a log line, colour codes aside.
fn number_after(line: &str, name: &str) -> Option<u64> {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    let key = format!("{name}=");
    let rest = &plain[plain.rfind(&key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// After a boot: every event sent so far against the journal (and the queue), and the
/// last cycle's acknowledged ids (a sample) must still be answered `duplicate`.
async fn check(
    state: &mut Run,
    guest: &Guest,
    acked: &[(String, String)],
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let found = verify::journal(&state.admin, Some(TOKEN), &state.names)
        .await
        .with_context(|| format!("cannot read the journal\n{}", guest.tail(40)))?;
    for key in std::mem::take(&mut state.expirable) {
        if !found.contains_key(&key) && state.gone.insert(key.clone()) {
            state.compacted.push(key);
            state.outcome.compacted += 1;
        }
    }
    let in_journal: verify::Sent = state
        .sent
        .iter()
        .filter(|(key, _)| !state.gone.contains(*key))
        .map(|(key, fate)| (key.clone(), fate.clone()))
        .collect();
    state.outcome.journal = verify::check(&in_journal, &found);
    // The last cycle's ids, and some whose events compaction removed.
    let mut sample: Vec<&(String, String)> = (0..40.min(acked.len()))
        .map(|_| &acked[(rng.next() % acked.len() as u64) as usize])
        .collect();
    for _ in 0..20.min(state.compacted.len()) {
        sample.push(&state.compacted[(rng.next() % state.compacted.len() as u64) as usize]);
    }
    for (source, id) in sample {
        let Some(which) = state.sources.iter().find(|s| &s.name == source) else {
            continue;
        };
        let answer = run::answer_once(&state.ingest, which, id, BODY).await;
        if answer.as_deref() != Some("duplicate") {
            eprintln!(
                "powercut: {source} {id} acknowledged before the cut, now answered {answer:?}"
            );
            state.outcome.forgotten += 1;
        }
    }
    if state.machine.broker {
        crate::crash::drain_wait(&state.admin, Some(TOKEN)).await?;
        let queue = state.queue.clone().unwrap_or_default();
        declared(&queue)
            .await
            .with_context(|| format!("the guest never declared {queue}\n{}", guest.tail(20)))?;
        for (key, n) in verify::queue(AMQP_HOST, &queue, Duration::from_secs(2)).await? {
            *state.queued.entry(key).or_default() += n;
        }
        state.outcome.queue = Some(verify::check(&state.sent, &state.queued));
    }
    Ok(())
}

/// Waits until the gateway has declared `queue` (it does on connecting, which after a
/// cut that came before any event can be after `check` starts).
async fn declared(queue: &str) -> anyhow::Result<()> {
    let connection =
        lapin::Connection::connect(AMQP_HOST, lapin::ConnectionProperties::default()).await?;
    let began = Instant::now();
    let mut result = Ok(());
    while began.elapsed() < Duration::from_secs(120) {
        let channel = connection.create_channel().await?;
        result = crate::depth(&channel, queue).await.map(|_| ());
        let _ = channel.close(200, "checked").await;
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = connection.close(200, "checked").await;
    result
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn delete_broker_names(exchange: &str, queue: &str) {
    let Ok(connection) =
        lapin::Connection::connect(AMQP_HOST, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(queue, lapin::options::QueueDeleteOptions::default())
            .await;
        let _ = channel
            .exchange_delete(exchange, lapin::options::ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_segment_is_read_from_the_log_line_then_the_listing() {
        let listing = "powercut: segments\n\
            -rw-r--r--    1 0 0   1048600 Dec  2 18:00 0000000000000003.seg\n\
            -rw-r--r--    1 0 0   1048590 Dec  2 18:00 0000000000000004.seg\n\
            -rw-r--r--    1 0 0   1048576 Dec  2 18:00 0000000000000002.free\n";
        assert_eq!(newest_segment_bytes(listing), 1_048_590);
        let logged = format!(
            "{listing}2026-12-02T18:00:01Z  INFO hookgate::journal::core: commit log continues \
             \u{1b}[3msegment\u{1b}[0m\u{1b}[2m=\u{1b}[0m4 \u{1b}[3moffset\u{1b}[0m\u{1b}[2m=\u{1b}[0m5120\n"
        );
        assert_eq!(newest_segment_bytes(&logged), 5120);
        // A line of an earlier boot does not count.
        assert_eq!(
            newest_segment_bytes(&format!("{logged}powercut: segments\n")),
            0
        );
    }
}
