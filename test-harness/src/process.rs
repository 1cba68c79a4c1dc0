//! Signalling processes by PID without `unsafe`: `kill(1)` for signals, `/proc` for
//! liveness and identity (Linux only, like the rest of the harness).

use std::fs;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const POLL: Duration = Duration::from_millis(50);

/// Sends `signal` (a name such as `TERM` or `KILL`) to `pid`.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill(1)")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed ({status})");
    }
    Ok(())
}

/// Whether `pid` names a process that has not exited (zombies count as exited).
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: `pid (comm) S ...`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The command line of `pid`, arguments joined by spaces; `None` if it is gone.
pub fn command_line(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    Some(args.join(" "))
}

/// SIGTERM, then SIGKILL if `pid` is still alive after `grace`. Returns whether the
/// process had to be killed.
pub fn terminate(pid: u32, grace: Duration) -> Result<bool> {
    if !is_alive(pid) {
        return Ok(false);
    }
    signal(pid, "TERM")?;
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return Ok(false);
        }
        thread::sleep(POLL);
    }
    signal(pid, "KILL")?;
    Ok(true)
}

/// Stops a child: SIGTERM (so it can shut down cleanly; std can only SIGKILL), then
/// SIGKILL after `grace`, and reaps it.
pub fn stop_child(child: &mut std::process::Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = signal(child.id(), "TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn terminates_a_child_and_sees_it_gone() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(is_alive(pid));
        // Until the child has exec'd, /proc shows the test binary's command line.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !command_line(pid).unwrap().starts_with("sleep 30") {
            assert!(Instant::now() < deadline, "{:?}", command_line(pid));
            thread::sleep(POLL);
        }
        // Reap in the background so the zombie disappears as soon as it exits.
        let reaper = thread::spawn(move || child.wait());
        assert!(!terminate(pid, Duration::from_secs(5)).unwrap());
        reaper.join().unwrap().unwrap();
        assert!(!is_alive(pid));
    }
}
