//! The guest machine of `powercut`: a Debian cloud kernel, an initramfs built here at run
//! time (busybox, the hookgate binary and its libraries, the virtio modules, an init
//! script), an ext4 disk image formatted on the host, and QEMU to run them. Killing QEMU
//! with SIGKILL is the power cut: the guest's page cache and every write it had not
//! flushed to the image are gone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The kernel modules the guest loads (with their dependencies, from `modules.dep`).
/// ext4 and crc32c are built into Debian's cloud kernel; if a kernel has them as modules
/// they are picked up too.
/// virtio_rng feeds the guest's entropy pool from the host, so that nothing in a fresh
/// guest waits for randomness.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "ext4",
];

/// What the guest is built from, found on the host.
pub struct Kit {
    pub kernel: PathBuf,
    pub modules: PathBuf,
    pub busybox: PathBuf,
    pub qemu: PathBuf,
}

impl Kit {
    /// Finds QEMU, the newest `vmlinuz-*cloud-amd64`, its modules and busybox; the error
    /// names what is missing (and the Debian package that has it).
    pub fn find() -> anyhow::Result<Kit> {
        let qemu = which("qemu-system-x86_64")
            .context("qemu-system-x86_64 is missing (Debian: qemu-system-x86)")?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("busybox is missing (Debian: busybox-static)")?;
        let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        kernels.retain(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("vmlinuz-") && name.ends_with("cloud-amd64")
        });
        kernels.sort();
        let kernel = kernels
            .pop()
            .context("no /boot/vmlinuz-*cloud-amd64 (Debian: linux-image-cloud-amd64)")?;
        let release = kernel.file_name().unwrap_or_default().to_string_lossy()["vmlinuz-".len()..]
            .to_string();
        let modules = Path::new("/lib/modules").join(&release);
        anyhow::ensure!(
            modules.join("modules.dep").exists(),
            "{} has no modules.dep (Debian: linux-image-cloud-amd64)",
            modules.display()
        );
        Ok(Kit {
            kernel,
            modules,
            busybox,
            qemu,
        })
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// The modules to load for `wanted`, dependencies first, as paths under `modules`.
/// A module absent from `modules.dep` is built in (ext4 on Debian's cloud kernel).
pub fn module_order(modules: &Path, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(modules.join("modules.dep"))?;
    let deps: std::collections::HashMap<String, Vec<String>> = text
        .lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((
                module.to_string(),
                deps.split_whitespace().map(String::from).collect(),
            ))
        })
        .collect();
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        path: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        // modules.dep lists every dependency, nearest last: load them in reverse.
        for dep in deps.get(path).into_iter().flatten().rev() {
            visit(dep, deps, seen, order);
        }
        order.push(path.to_string());
    }
    for want in wanted {
        if let Some(path) = deps.keys().find(|p| name_of(p) == *want) {
            visit(path, &deps, &mut seen, &mut order);
        }
    }
    Ok(order.into_iter().map(|p| modules.join(p)).collect())
}

/// The init script: modules, the disk, the network, then `hookgate serve`. The kernel
/// command line's `powercut.config=NAME` picks `/etc/NAME.toml`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev /mnt /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "powercut: insmod $m failed"; done
for i in $(seq 1 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 /dev/vda /mnt || echo "powercut: cannot mount /dev/vda"
mkdir -p /mnt/journal
echo "powercut: segments"
ls -l /mnt/journal/log 2>/dev/null || ls -lR /mnt/journal | head -50
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
ip route add default via 10.0.2.2
config=default
for word in $(cat /proc/cmdline); do
  case "$word" in powercut.config=*) config="${word#powercut.config=}";; esac
done
echo "powercut: hookgate starting with /etc/$config.toml"
HOOKGATE_LOG=warn,hookgate::journal=info /hookgate serve -c /etc/$config.toml
echo "powercut: hookgate exited with $?"
sync
while true; do sleep 3600; done
"#;

/// Builds the initramfs (a gzip'd newc cpio, by the `cpio` tool) in `dir`: busybox, a
/// copy of `hookgate` without debug info, the libraries `ldd` names, the modules, the
/// init script and `configs` (name, TOML text) as `/etc/NAME.toml`.
pub fn initramfs(
    kit: &Kit,
    hookgate: &Path,
    configs: &[(&str, String)],
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for sub in ["bin", "etc", "modules"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy(&kit.busybox, root.join("bin/busybox"))?;
    // The debug binary is ~180 MB, mostly debug info; the guest needs none of it.
    let status = Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(root.join("hookgate"))
        .arg(hookgate)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        std::fs::copy(hookgate, root.join("hookgate"))?;
    }
    let ldd = Command::new("ldd")
        .arg(hookgate)
        .output()
        .context("cannot run ldd")?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux… (0x…)`.
        let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) else {
            continue;
        };
        let to = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("a library path has a parent"))?;
        std::fs::copy(path, &to).with_context(|| format!("cannot copy {path}"))?;
    }
    let mut order = String::new();
    for module in module_order(&kit.modules, MODULES)? {
        let name = module
            .file_name()
            .expect("a module file")
            .to_string_lossy()
            .to_string();
        std::fs::copy(&module, root.join("modules").join(&name))?;
        order.push_str(&name);
        order.push('\n');
    }
    std::fs::write(root.join("modules/order"), order)?;
    for (name, text) in configs {
        std::fs::write(root.join(format!("etc/{name}.toml")), text)?;
    }
    let init = root.join("init");
    std::fs::write(&init, INIT)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    let out = dir.join("initramfs.cpio.gz");
    let script = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        out.display()
    );
    let status = Command::new("sh").args(["-c", &script]).status()?;
    anyhow::ensure!(
        status.success(),
        "cannot build the initramfs (is `cpio` installed?)"
    );
    std::fs::remove_dir_all(&root)?;
    Ok(out)
}

/// A sparse image of `bytes`, formatted ext4 on the host.
pub fn disk(path: &Path, bytes: u64) -> anyhow::Result<()> {
    std::fs::File::create(path)?.set_len(bytes)?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .output()
        .context("cannot run mkfs.ext4 (Debian: e2fsprogs)")?;
    anyhow::ensure!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How QEMU runs the guest: what it boots and where its ports are forwarded.
pub struct Machine {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub disk: PathBuf,
    pub ingest_port: u16,
    pub admin_port: u16,
    /// Forward the guest's 10.0.2.100:5672 to the host's RabbitMQ.
    pub broker: bool,
    /// `none` (O_DIRECT: a guest flush is a host write to the device) or `writeback`.
    pub cache: &'static str,
    pub dir: PathBuf,
}

/// A running guest; killed (SIGKILL) when dropped.
pub struct Guest {
    child: Child,
    pub console: PathBuf,
    pub qemu_log: PathBuf,
    pub started: Instant,
}

impl Machine {
    pub fn boot(&self, accel: Accel, config: &str, boot: u32) -> anyhow::Result<Guest> {
        let console = self.dir.join(format!("console-{boot}.log"));
        let qemu_log = self.dir.join(format!("qemu-{boot}.log"));
        let mut net = format!(
            "user,id=n0,restrict=off,hostfwd=tcp:127.0.0.1:{}-:8080,hostfwd=tcp:127.0.0.1:{}-:9090",
            self.ingest_port, self.admin_port
        );
        if self.broker {
            // `cmd:` runs socat for each connection the guest opens; a `tcp:` target would
            // be one connection, made once when QEMU starts.
            net.push_str(",guestfwd=tcp:10.0.2.100:5672-cmd:socat STDIO TCP:127.0.0.1:5672");
        }
        let mut command = Command::new(&self.qemu);
        match accel {
            Accel::Kvm => command.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => command.args(["-accel", "tcg", "-cpu", "max"]),
        };
        command
            .args([
                "-m",
                "1024",
                "-smp",
                "2",
                "-nographic",
                "-monitor",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            .arg("-append")
            // no_timer_check: an emulated guest on a starved host can fail the kernel's
            // IO-APIC timer check and panic at boot ("IO-APIC + timer doesn't work").
            .arg(format!(
                "console=ttyS0 panic=-1 quiet no_timer_check powercut.config={config}"
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,cache={}",
                self.disk.display(),
                self.cache
            ))
            .args([
                "-netdev",
                &net,
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&qemu_log)?))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&qemu_log)?,
            ));
        let child = command.spawn().context("cannot start QEMU")?;
        Ok(Guest {
            child,
            console,
            qemu_log,
            started: Instant::now(),
        })
    }
}

impl Guest {
    /// The power cut: SIGKILL to QEMU, and wait until it is gone.
    pub fn cut(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("cannot SIGKILL QEMU")?;
        self.child.wait()?;
        Ok(())
    }

    /// QEMU's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn console_text(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn qemu_text(&self) -> String {
        std::fs::read(&self.qemu_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The console's last `lines` lines and QEMU's own messages, for a failure report.
    pub fn tail(&self, lines: usize) -> String {
        let console = self.console_text();
        let all: Vec<&str> = console.lines().collect();
        format!(
            "--- guest console ({}) ---\n{}\n--- qemu ---\n{}",
            self.console.display(),
            all[all.len().saturating_sub(lines)..].join("\n"),
            self.qemu_text()
        )
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
