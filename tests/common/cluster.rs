//! A three-node RabbitMQ cluster on this machine, for tests/cluster.rs. Each node is a
//! `rabbitmq-server` of its own: its own node name, AMQP and distribution ports
//! (`RABBITMQ_NODENAME`, `RABBITMQ_NODE_PORT`, `RABBITMQ_DIST_PORT`), data, logs and
//! config under a temporary directory (`RABBITMQ_MNESIA_BASE`, `RABBITMQ_LOG_BASE`,
//! `RABBITMQ_CONFIG_FILE`), and one Erlang cookie for all (`$HOME/.erlang.cookie`). The
//! nodes are clustered with `rabbitmqctl join_cluster`.
//!
//! The machine's own broker (`rabbit@localhost` on 5672, which the other tests use) is
//! left alone: other names, other ports, and none of its files in /etc/rabbitmq is read.
//! The scripts in /usr/lib/rabbitmq/bin are run directly, as the caller: the wrappers in
//! /usr/sbin switch to the `rabbitmq` user, with that broker's home and cookie.
//!
//! Every node runs in a process group of its own under a small shell that kills the group
//! once the test's end of the shell's stdin closes: a test that panics, or is itself
//! killed, leaves no node behind. (The hookgate replicas of tests/cluster.rs are killed
//! when the test unwinds, as in loadtest/tests/ci.rs, but not if the test is killed.)

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// How long a node may take to start (three at once on two shared cores take about
/// ten seconds here).
const START: Duration = Duration::from_secs(180);
/// How long one `rabbitmqctl` call may take.
const CTL: Duration = Duration::from_secs(120);

/// `rabbitmq-server` and `rabbitmqctl`: the Debian package's own scripts when they are
/// there, else whatever is on the PATH (a generic install).
fn script(name: &str) -> PathBuf {
    let packaged = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if packaged.exists() {
        packaged
    } else {
        PathBuf::from(name)
    }
}

pub struct Member {
    /// The Erlang node name, `hgtest_<pid>_<i>@localhost`.
    pub name: String,
    /// The AMQP port on 127.0.0.1.
    pub port: u16,
    dist_port: u16,
    dir: PathBuf,
    /// The shell that runs the node, while it runs.
    process: Option<Child>,
}

impl Member {
    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `127.0.0.1:<port>`, as hookgate names the node in use.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub struct Cluster {
    /// HOME for the nodes and the CLI: the cookie, the plugin list, an empty env file.
    home: tempfile::TempDir,
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts `size` nodes at once and joins the others to the first. Prints how long it
    /// took and how much memory each node holds.
    pub fn start(size: usize) -> Cluster {
        let home = tempfile::tempdir().unwrap();
        let cookie = home.path().join(".erlang.cookie");
        std::fs::write(
            &cookie,
            format!("hookgate-test-cookie-{}", std::process::id()),
        )
        .unwrap();
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(home.path().join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(home.path().join("rabbitmq-env.conf"), "").unwrap();
        let members = (0..size)
            .map(|i| {
                let dir = home.path().join(format!("node{i}"));
                std::fs::create_dir(&dir).unwrap();
                let port = free_port();
                // As the deploy kit's cluster (deploy/k8s/rabbitmq.yaml): queue leaders
                // spread over the nodes, not all on the one the first client used.
                std::fs::write(
                    dir.join("rabbitmq.conf"),
                    format!(
                        "listeners.tcp.default = 127.0.0.1:{port}\nqueue_leader_locator = balanced\n"
                    ),
                )
                .unwrap();
                Member {
                    name: format!("hgtest_{}_{i}@localhost", std::process::id()),
                    port,
                    dist_port: free_port(),
                    dir,
                    process: None,
                }
            })
            .collect();
        let mut cluster = Cluster { home, members };
        let started = Instant::now();
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_started(i);
        }
        let up = started.elapsed();
        let first = cluster.members[0].name.clone();
        for i in 1..size {
            cluster.ctl(i, &["stop_app"]);
            cluster.ctl(i, &["join_cluster", &first]);
            cluster.ctl(i, &["start_app"]);
            cluster.wait_started(i);
        }
        cluster.wait_running(size);
        eprintln!(
            "cluster: {size} nodes started in {:.1} s, clustered in {:.1} s more; resident memory {} MiB",
            up.as_secs_f64(),
            (started.elapsed() - up).as_secs_f64(),
            cluster
                .members
                .iter()
                .map(|m| cluster.resident_mib(m).map_or("?".into(), |m| m.to_string()))
                .collect::<Vec<_>>()
                .join(" + ")
        );
        cluster
    }

    /// The environment a node and the CLI share: the home with the cookie, and an empty
    /// env file in place of /etc/rabbitmq/rabbitmq-env.conf.
    fn base_env(&self, command: &mut Command) {
        command
            .env("HOME", self.home.path())
            .env(
                "RABBITMQ_CONF_ENV_FILE",
                self.home.path().join("rabbitmq-env.conf"),
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    }

    /// Starts node `i` on its own directory (after a kill, it joins the cluster again).
    fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let dir = &member.dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stdout.log"))
            .unwrap();
        // `cat` returns when the test's end of stdin closes (the test ended, however it
        // did); then the whole group goes. An asynchronous command's stdin is /dev/null
        // unless redirected, hence fd 3. SIGHUP is ignored: a group left without its
        // parent while a member is stopped (a frozen node) gets SIGHUP from the kernel.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("exec 3<&0; \"$0\" </dev/null 3<&- & server=$!; (trap '' HUP; cat <&3 >/dev/null; kill -KILL 0) & wait $server")
            .arg(script("rabbitmq-server"))
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        self.base_env(&mut command);
        command
            .env("RABBITMQ_NODENAME", &member.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", member.port.to_string())
            .env("RABBITMQ_DIST_PORT", member.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.home.path().join("enabled_plugins"),
            )
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
        let process = command.spawn().expect("rabbitmq-server starts");
        self.members[i].process = Some(process);
    }

    /// Waits until node `i` takes AMQP connections.
    fn wait_started(&mut self, i: usize) {
        let started = Instant::now();
        loop {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.members[i].port));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return;
            }
            let exited = self.members[i]
                .process
                .as_mut()
                .and_then(|p| p.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > START {
                panic!(
                    "node {} did not start ({exited:?} after {:?}):\n{}",
                    self.members[i].name,
                    started.elapsed(),
                    self.tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until node 0 sees `count` nodes running.
    fn wait_running(&self, count: usize) {
        let started = Instant::now();
        loop {
            if let Some(running) = self.running_nodes() {
                if running.len() >= count {
                    return;
                }
            }
            assert!(
                started.elapsed() < START,
                "the cluster never had {count} nodes running"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The running nodes, as any running member sees them.
    pub fn running_nodes(&self) -> Option<Vec<String>> {
        (0..self.members.len()).find_map(|i| {
            let out = self.try_ctl(i, &["cluster_status", "--formatter", "json"])?;
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let nodes = status["running_nodes"].as_array()?;
            Some(
                nodes
                    .iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect(),
            )
        })
    }

    /// `rabbitmqctl -n <node i> …`, or None if it failed or took too long.
    pub fn try_ctl(&self, i: usize, args: &[&str]) -> Option<Output> {
        let mut command = Command::new(script("rabbitmqctl"));
        command
            .args(["-q", "-n", &self.members[i].name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.base_env(&mut command);
        let mut child = command.spawn().expect("rabbitmqctl runs");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                if status.success() {
                    return Some(out);
                }
                eprintln!(
                    "rabbitmqctl -n {} {args:?}: {status}\n{}",
                    self.members[i].name,
                    String::from_utf8_lossy(&out.stderr)
                );
                return None;
            }
            if started.elapsed() > CTL {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!(
                    "rabbitmqctl -n {} {args:?}: timed out",
                    self.members[i].name
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `rabbitmqctl -n <node i> …`, which must succeed.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Output {
        self.try_ctl(i, args).unwrap_or_else(|| {
            panic!(
                "rabbitmqctl -n {} {args:?} failed\n{}",
                self.members[i].name,
                self.tail(i)
            )
        })
    }

    /// The member that leads `queue` (a quorum queue), asked of any running node.
    pub fn leader(&self, queue: &str) -> Option<usize> {
        (0..self.members.len()).find_map(|i| {
            let out = self.try_ctl(i, &["list_queues", "name", "leader", "--formatter", "json"])?;
            let queues: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let leader = queues.as_array()?.iter().find(|q| q["name"] == queue)?["leader"]
                .as_str()?
                .to_string();
            self.members.iter().position(|m| m.name == leader)
        })
    }

    /// The member listening on `addr` (`127.0.0.1:<port>`).
    pub fn by_addr(&self, addr: &str) -> Option<usize> {
        self.members.iter().position(|m| m.addr() == addr)
    }

    /// SIGSTOP to node `i`'s Erlang VM: it stops answering, its connections stay open,
    /// and what is sent to it waits in its sockets. Only the VM: the shell that kills
    /// the node when the test ends must stay awake.
    pub fn freeze(&mut self, i: usize) {
        let pid = std::fs::read_to_string(self.members[i].dir.join("pid"))
            .expect("the node wrote its pid file");
        let status = Command::new("kill")
            .args(["-STOP", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "SIGSTOP to node {i} ({})", pid.trim());
    }

    /// SIGKILL to node `i`'s whole process group: the Erlang VM and its helpers, as in
    /// a machine's crash.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", process.id())])
                .status();
            let _ = process.wait();
        }
    }

    /// Starts node `i` again after [`Cluster::kill`]; it rejoins on its own data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "node {i} still runs");
        self.spawn(i);
        self.wait_started(i);
        self.wait_running(self.members.len());
    }

    pub fn stop_app(&self, i: usize) {
        self.ctl(i, &["stop_app"]);
    }

    pub fn start_app(&mut self, i: usize) {
        self.ctl(i, &["start_app"]);
        self.wait_started(i);
        self.wait_running(self.members.len());
    }

    /// A node's resident memory, from /proc (the Erlang VM is the group's largest).
    fn resident_mib(&self, member: &Member) -> Option<u64> {
        let pid = std::fs::read_to_string(member.dir.join("pid")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024)
    }

    /// The end of node `i`'s output and log, for a failure's message.
    pub fn tail(&self, i: usize) -> String {
        let dir = &self.members[i].dir;
        let mut text = String::new();
        let log = dir
            .join("log")
            .join(format!("{}.log", self.members[i].name));
        for path in [dir.join("stdout.log"), log] {
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let from = lines.len().saturating_sub(30);
            text.push_str(&format!(
                "--- {}\n{}\n",
                path.display(),
                lines[from..].join("\n")
            ));
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
