//! Support of the boot test (tests/boot_proof.rs): a disk image with a boot sector and a
//! nonce, a user-space iSCSI target (`tgtd`) serving it on loopback with CHAP and an
//! initiator ACL, and a QEMU virtual machine that network-boots through iPXE and the script
//! Ironic wrote, with its serial console captured line by line with timestamps.
//!
//! Network: QEMU's user-mode network only (no tap, bridge or namespace). The guest sees the
//! host's loopback as 192.0.2.10, so a portal `192.0.2.10:<port>` reaches the target bound
//! to 127.0.0.1:<port>, and QEMU's built-in TFTP server serves Ironic's HTTP root.
//!
//! Everything started here is killed by PID when its guard drops.
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    fmt,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The packages the boot test needs (Debian/Ubuntu names).
pub const PACKAGES: &str = "qemu-system-x86 ipxe-qemu tgt nasm";
/// The command that installs them.
pub const INSTALL_COMMAND: &str = "apt-get install -y qemu-system-x86 ipxe-qemu tgt nasm";
/// What the boot sector prints first: the firmware loaded it from the volume.
pub const MARKER: &str = "BOOTVOLUME-MBR-OK";
/// The guest's address of the host's loopback (QEMU user-mode network `host=`).
pub const HOST_IN_GUEST: &str = "192.0.2.10";
/// The LUN of the volume (LUN 0 of a tgt target is its controller, not a disk).
pub const LUN: u32 = 1;
/// Disk size: iPXE derives a CHS geometry of 255 heads and 63 sectors, and a disk smaller
/// than one such cylinder (about 8 MiB) cannot be read through the legacy INT 13h calls it
/// uses to load the boot sector. The file is sparse.
const DISK_SECTORS: u64 = 32 * 1024;
/// The virtio-net option ROM (iPXE) QEMU loads for the NIC, from `ipxe-qemu`.
const IPXE_ROMS: [&str; 2] = [
    "/usr/lib/ipxe/qemu/efi-virtio.rom",
    "/usr/share/qemu/efi-virtio.rom",
];
const TOOLS: [&str; 4] = ["qemu-system-x86_64", "tgtd", "tgtadm", "nasm"];

/// Where `tool` is: on `PATH`, or in the sbin directories a non-root `PATH` may lack.
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// A command running `tool` (found by [`which`]; the bare name when missing, so the spawn
/// error names it).
fn command(tool: &str) -> Command {
    Command::new(which(tool).unwrap_or_else(|| tool.into()))
}

/// What is missing of the tools, by name.
fn missing_tools() -> Vec<&'static str> {
    let mut missing: Vec<&str> = TOOLS.into_iter().filter(|t| which(t).is_none()).collect();
    if !IPXE_ROMS.iter().any(|p| Path::new(p).is_file()) {
        missing.push("efi-virtio.rom (ipxe-qemu)");
    }
    missing
}

/// Makes sure QEMU, the iPXE ROMs, tgt and nasm are installed: installs them with apt-get
/// when missing and running as root (as CI does); otherwise panics with the command to run.
/// Never skips: a boot test that silently does nothing proves nothing.
pub fn require_tools() {
    let missing = missing_tools();
    if missing.is_empty() {
        return;
    }
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    assert!(
        root && which("apt-get").is_some(),
        "the boot test needs {missing:?}: run `{INSTALL_COMMAND}` as root (packages: {PACKAGES})"
    );
    eprintln!("boot test: installing {PACKAGES} (missing {missing:?})");
    // Test processes may run in parallel: one installs at a time (apt's own lock fails
    // instead of waiting), and `apt-get update` only when the first attempt fails.
    let script = format!(
        "flock /tmp/bootvolume-apt.lock sh -c '{INSTALL_COMMAND} || (apt-get update && {INSTALL_COMMAND})'"
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    let missing = missing_tools();
    assert!(
        status.is_ok_and(|s| s.success()) && missing.is_empty(),
        "installing the boot test's tools failed (still missing {missing:?}): run `{INSTALL_COMMAND}` as root"
    );
}

/// A fresh random hex string (std only: hashes of a random-keyed hasher).
pub fn random_hex(bytes: usize) -> String {
    use std::hash::BuildHasher;
    let mut out = String::new();
    while out.len() < bytes * 2 {
        let v = std::collections::hash_map::RandomState::new().hash_one((
            std::process::id(),
            Instant::now(),
            out.len(),
        ));
        out.push_str(&format!("{v:016x}"));
    }
    out.truncate(bytes * 2);
    out
}

/// A free TCP port on 127.0.0.1 (the kernel's choice).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd:?} failed ({}): {text}", out.status))
    }
}

/// The volume: a sparse disk image whose first sector is the test's boot sector and whose
/// last sector holds this run's nonce.
pub struct Disk {
    /// The image file.
    pub path: PathBuf,
    /// The line the boot sector prints from the last sector (`NONCE-<hex>`).
    pub nonce: String,
}

impl Disk {
    /// Assembles the boot sector with nasm and writes the image into `dir`.
    pub fn create(dir: &Path) -> Disk {
        let asm = dir.join("mbr.asm");
        let mbr = dir.join("mbr.bin");
        std::fs::write(&asm, include_str!("mbr.asm")).expect("write mbr.asm");
        run(command("nasm")
            .args(["-f", "bin", &format!("-DLAST_LBA={}", DISK_SECTORS - 1), "-o"])
            .arg(&mbr)
            .arg(&asm))
        .unwrap_or_else(|e| panic!("assembling the boot sector: {e}"));
        let sector = std::fs::read(&mbr).expect("read mbr.bin");
        assert_eq!(sector.len(), 512, "the boot sector is one sector");
        assert_eq!(&sector[510..], &[0x55, 0xaa], "boot signature");

        let nonce = format!("NONCE-{}", random_hex(16));
        let path = dir.join("volume.img");
        let mut file = std::fs::File::create(&path).expect("create volume.img");
        file.set_len(DISK_SECTORS * 512).expect("size volume.img");
        file.write_all(&sector).expect("write boot sector");
        let mut last = format!("{nonce}\r\n").into_bytes();
        last.resize(512, 0);
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start((DISK_SECTORS - 1) * 512))
            .expect("seek to the last sector");
        file.write_all(&last).expect("write nonce");
        Disk { path, nonce }
    }
}

/// What the target serves and to whom.
pub struct TargetSpec<'a> {
    /// Target IQN.
    pub iqn: &'a str,
    /// The image served as LUN [`LUN`].
    pub disk: &'a Disk,
    /// CHAP user name.
    pub username: &'a str,
    /// CHAP secret.
    pub password: &'a str,
    /// Initiator IQNs allowed to log in (the ACL; nothing else is allowed).
    pub initiators: &'a [&'a str],
}

/// A `tgtd` serving one target on 127.0.0.1:[`Target::port`]; killed on drop.
pub struct Target {
    child: Child,
    /// iSCSI port on 127.0.0.1 (also tgtd's management "control port": unique per instance).
    pub port: u16,
    /// Target IQN.
    pub iqn: String,
    log: PathBuf,
    /// Its management socket is its own (it started): removed on drop.
    ready: bool,
}

impl Target {
    /// Starts tgtd on a free loopback port and configures the target: LUN 1, CHAP required
    /// (one account bound to the target), an ACL of initiator names only (tgt ignores the
    /// name ACL when an address ACL matches, so none is set).
    pub fn start(dir: &Path, spec: &TargetSpec) -> Target {
        // The kernel's free port may be taken again before tgtd binds it, and two ports
        // may share a control port: try a few.
        let mut failures = Vec::new();
        let target = loop {
            match Target::spawn(dir, spec.iqn) {
                Ok(target) => break target,
                Err(e) if failures.len() < 4 => failures.push(e),
                Err(e) => panic!("tgtd did not start:\n{}\n{e}", failures.join("\n")),
            }
        };
        let lun = LUN.to_string();
        let disk = spec.disk.path.to_str().expect("utf-8 path");
        target.must(&["--op", "new", "--mode", "target", "--tid", "1", "-T", spec.iqn]);
        target.must(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            &lun,
            "-b",
            disk,
        ]);
        target.add_account(spec.username, spec.password);
        for initiator in spec.initiators {
            target.must(&[
                "--op",
                "bind",
                "--mode",
                "target",
                "--tid",
                "1",
                "--initiator-name",
                initiator,
            ]);
        }
        target
    }

    /// tgtd's management socket is `/var/run/tgtd/socket.<control port>`, a number below
    /// 32768 here: derived from the iSCSI port, so each instance has its own.
    fn control_port(port: u16) -> u16 {
        1 + port % 32000
    }

    /// Starts one tgtd and waits until it answers on both its management socket and its
    /// iSCSI port.
    fn spawn(dir: &Path, iqn: &str) -> Result<Target, String> {
        let port = free_port();
        let log = dir.join(format!("tgtd-{port}.log"));
        let out = std::fs::File::create(&log).expect("create tgtd log");
        let child = command("tgtd")
            .args(["-f", "-C", &Self::control_port(port).to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start tgtd: {e} (install: `{INSTALL_COMMAND}`)"));
        let mut target = Target {
            child,
            port,
            iqn: iqn.to_owned(),
            log,
            ready: false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while target.adm(&["--op", "show", "--mode", "system"]).is_err()
            || TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            if let Ok(Some(status)) = target.child.try_wait() {
                return Err(format!("tgtd on port {port} exited ({status}): {}", target.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("tgtd on port {port} not ready in 10 s: {}", target.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        target.ready = true;
        Ok(target)
    }

    fn adm(&self, args: &[&str]) -> Result<String, String> {
        run(command("tgtadm")
            .args(["-C", &Self::control_port(self.port).to_string(), "--lld", "iscsi"])
            .args(args))
    }

    fn must(&self, args: &[&str]) {
        // Arguments may hold the CHAP secret: the error names only the operation.
        if let Err(e) = self.adm(args) {
            let op: Vec<&str> = args.iter().take(4).copied().collect();
            let detail = e.rsplit_once("): ").map_or("", |(_, t)| t).to_owned();
            panic!("tgtadm {op:?} failed: {detail}");
        }
    }

    fn add_account(&self, username: &str, password: &str) {
        self.must(&[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            username,
            "--password",
            password,
        ]);
        self.must(&[
            "--op", "bind", "--mode", "account", "--tid", "1", "--user", username,
        ]);
    }

    /// Rotates the CHAP secret: the account is replaced (tgt has no password update).
    pub fn set_password(&self, username: &str, password: &str) {
        self.must(&[
            "--op", "unbind", "--mode", "account", "--tid", "1", "--user", username,
        ]);
        self.must(&["--op", "delete", "--mode", "account", "--user", username]);
        self.add_account(username, password);
    }

    /// The portal as the guest reaches it.
    pub fn portal(&self) -> String {
        format!("{HOST_IN_GUEST}:{}", self.port)
    }

    /// tgtd's output so far (login failures show here).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // tgtd leaves its management socket behind when killed.
        if !self.ready {
            return;
        }
        let socket = format!("/var/run/tgtd/socket.{}", Self::control_port(self.port));
        let _ = std::fs::remove_file(format!("{socket}.lock"));
        let _ = std::fs::remove_file(socket);
    }
}

/// How a VM boots.
pub struct VmSpec<'a> {
    /// A name for logs (`<name>.serial.log` in the test's directory).
    pub name: &'a str,
    /// QEMU's TFTP root: Ironic's HTTP root.
    pub tftp_root: &'a Path,
    /// The DHCP boot file name: `<node uuid>/config` or Ironic's `boot.ipxe`.
    pub bootfile: &'a str,
    /// The NIC's MAC (the node's port).
    pub mac: &'a str,
    /// Hard bound on the VM's life.
    pub timeout: Duration,
    /// Stop early once the serial console shows this (e.g. the expected error): after a
    /// failed sanhook, Ironic's script retries every 10 s forever.
    pub stop_at: Option<&'a str>,
}

/// One serial line and when it was complete, from QEMU's start.
#[derive(Clone, Debug)]
pub struct Line {
    /// Time since QEMU was started.
    pub at: Duration,
    /// The text, without escape sequences and carriage returns.
    pub text: String,
}

/// How a boot went.
pub struct Boot {
    /// VM name.
    pub name: String,
    /// The serial console, line by line.
    pub lines: Vec<Line>,
    /// QEMU's exit code (33: the boot sector read the volume and ended the VM); `None`
    /// when the test killed it (timeout or `stop_at`).
    pub exit: Option<i32>,
    /// QEMU's life.
    pub elapsed: Duration,
    /// The timeout fired.
    pub timed_out: bool,
}

/// Milestones of one boot, from QEMU's start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// iPXE's banner (the NIC ROM took over).
    pub ipxe: Option<Duration>,
    /// The node's boot script downloaded over TFTP.
    pub script: Option<Duration>,
    /// The boot sector's marker.
    pub marker: Option<Duration>,
}

impl fmt::Display for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
        write!(
            f,
            "to iPXE {}, to script {}, to marker {}",
            s(self.ipxe),
            s(self.script),
            s(self.marker)
        )
    }
}

impl Boot {
    /// The console as text (one line per line, no timestamps).
    pub fn text(&self) -> String {
        self.lines.iter().map(|l| format!("{}\n", l.text)).collect()
    }

    /// The console with timestamps, for failure messages and the test output.
    pub fn transcript(&self) -> String {
        self.lines
            .iter()
            .filter(|l| !l.text.trim().is_empty())
            .map(|l| format!("[{:7.3}] {}\n", l.at.as_secs_f64(), l.text))
            .collect()
    }

    fn first(&self, pred: impl Fn(&str) -> bool) -> Option<Duration> {
        self.lines.iter().find(|l| pred(&l.text)).map(|l| l.at)
    }

    /// When iPXE, the script and the marker showed up.
    pub fn timings(&self) -> Timings {
        Timings {
            ipxe: self.first(|t| t.starts_with("iPXE")),
            // With `boot.ipxe` the node's script is the last of the chain.
            script: self
                .lines
                .iter()
                .rev()
                .find(|l| l.text.contains("[script]"))
                .map(|l| l.at),
            marker: self.first(|t| t.contains(MARKER)),
        }
    }

    /// The VM booted the volume and read this disk's nonce from it.
    pub fn booted(&self, disk: &Disk) -> bool {
        let text = self.text();
        text.contains(MARKER) && text.contains(&disk.nonce) && self.exit == Some(33)
    }

    /// The serial lines that mention the reason of a failed boot (iPXE errors).
    pub fn errors(&self) -> Vec<&str> {
        self.lines
            .iter()
            .map(|l| l.text.as_str())
            .filter(|t| t.contains("ipxe.org/") || t.contains("BOOTVOLUME-READ-FAILED"))
            .collect()
    }

    /// A one-line summary with the timings.
    pub fn summary(&self) -> String {
        format!(
            "boot {}: {} in {:.2} s ({})",
            self.name,
            match (self.exit, self.timed_out) {
                (Some(33), _) => "booted".to_owned(),
                (_, true) => "timed out".to_owned(),
                (Some(code), _) => format!("exit {code}"),
                (None, false) => "stopped".to_owned(),
            },
            self.elapsed.as_secs_f64(),
            self.timings()
        )
    }
}

/// Removes terminal control from a raw serial line: escape sequences, carriage returns
/// (iPXE redraws lines with them), backspaces (with the character they erase).
fn clean(raw: &[u8]) -> String {
    let mut out: Vec<char> = Vec::new();
    let text = String::from_utf8_lossy(raw);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // CSI: parameters up to a final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\u{8}' => {
                out.pop();
            }
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.into_iter().collect::<String>().trim_end().to_owned()
}

/// Boots a VM: BIOS (SeaBIOS), TCG, no disk, a virtio-net NIC with iPXE as its option ROM,
/// QEMU's user-mode network (guest 192.0.2.15, host loopback as 192.0.2.10, DHCP offering
/// `bootfile` from the TFTP root). Blocks until QEMU exits, `stop_at` appears or the
/// timeout, then kills QEMU by PID. The console is also written to `<dir>/<name>.serial.log`.
pub fn boot(dir: &Path, spec: &VmSpec) -> Boot {
    let netdev = format!(
        "user,id=n0,net=192.0.2.0/24,host={HOST_IN_GUEST},tftp={},bootfile={}",
        spec.tftp_root.display(),
        spec.bootfile
    );
    let started = Instant::now();
    let child = command("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "256", "-nographic", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-boot", "n"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-netdev", &netdev])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={}", spec.mac)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start qemu-system-x86_64: {e} (install: `{INSTALL_COMMAND}`)"));
    let mut child = KillOnDrop(child);
    let lines: Arc<Mutex<Vec<Line>>> = Arc::default();
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let at = started.elapsed();
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let raw: Vec<u8> = pending.drain(..=end).collect();
                    let text = clean(&raw);
                    lines
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Line { at, text });
                }
            }
            if !pending.is_empty() {
                let text = clean(&pending);
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(Line {
                    at: started.elapsed(),
                    text,
                });
            }
        })
    };
    let mut exit = None;
    let mut timed_out = false;
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            exit = status.code();
            break;
        }
        if let Some(stop) = spec.stop_at {
            let seen = lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|l| l.text.contains(stop));
            if seen {
                break;
            }
        }
        if started.elapsed() > spec.timeout {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr_pipe = child.0.stderr.take();
    drop(child);
    let elapsed = started.elapsed();
    let _ = reader.join();
    let mut stderr = String::new();
    if let Some(mut e) = stderr_pipe {
        let _ = e.read_to_string(&mut stderr);
    }
    let mut lines = std::mem::take(&mut *lines.lock().unwrap_or_else(|p| p.into_inner()));
    lines.extend(
        stderr
            .lines()
            .filter(|l| !l.contains("terminating on signal"))
            .map(|l| Line {
                at: elapsed,
                text: format!("qemu: {l}"),
            }),
    );
    let boot = Boot {
        name: spec.name.to_owned(),
        lines,
        exit,
        elapsed,
        timed_out,
    };
    let _ = std::fs::write(dir.join(format!("{}.serial.log", spec.name)), boot.transcript());
    boot
}

/// Kills a child by PID (SIGKILL) and reaps it when dropped, so a panicking test leaves no
/// VM behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn clean_strips_terminal_control() {
        assert_eq!(clean(b"\x1b[0;1miPXE 1.0\x1b[0m -- x\r\n"), "iPXE 1.0 -- x");
        assert_eq!(
            clean(b"Press Ctrl-B...\x08 \x08\x08 \x08net0: up\r\n"),
            "Press Ctrl-B.net0: up"
        );
        assert_eq!(clean(b"\x1bc\x1b[?7lSeaBIOS\r\n"), "SeaBIOS");
    }
}
