//! Stopping a child process and everything it started.
//!
//! Rule kept here: signals go to the child's whole process group, never to
//! the leader alone, and the leader is always reaped before we report, so
//! no zombie and no orphaned grandchild outlives a [`terminate`] call.
//!
//! The sequence mirrors what the kubelet does to a container: SIGTERM, wait
//! up to the grace period, SIGKILL. As with a container whose main process
//! has exited, once the leader is gone whatever is left in its group gets
//! SIGKILL: a leader that wants its children to finish must wait for them.
//!
//! The child must lead its own process group, or `killpg` would hit our own
//! group: spawn it with [`spawn_in_process_group`] (or call
//! `Command::process_group(0)` yourself). Both are safe code.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};
use tokio::process::{Child, Command};

use crate::error::Error;

/// How long to wait for the kernel to finish a SIGKILL before giving up on
/// reaping. SIGKILL cannot be caught; only a process stuck in uninterruptible
/// sleep (a hung NFS mount, say) survives this long, and waiting forever for
/// it would wedge the caller.
const KILL_REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// How a [`terminate`] call ended the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminationOutcome {
    /// The child had already exited before we sent anything.
    Exited(ExitStatus),
    /// The child ended within the grace period after SIGTERM.
    Terminated(ExitStatus),
    /// The child ignored SIGTERM and was killed with SIGKILL after the grace period.
    Killed(ExitStatus),
}

impl TerminationOutcome {
    /// The child's exit status, whatever ended it.
    pub fn status(&self) -> ExitStatus {
        match *self {
            TerminationOutcome::Exited(s)
            | TerminationOutcome::Terminated(s)
            | TerminationOutcome::Killed(s) => s,
        }
    }

    /// A short label (`exited`, `terminated`, `killed`) for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            TerminationOutcome::Exited(_) => "exited",
            TerminationOutcome::Terminated(_) => "terminated",
            TerminationOutcome::Killed(_) => "killed",
        }
    }
}

/// Spawns `cmd` as the leader of a new process group, so [`terminate`] can
/// signal it together with everything it starts.
pub fn spawn_in_process_group(cmd: &mut Command) -> io::Result<Child> {
    cmd.process_group(0).spawn()
}

/// Stops `child` and its process group: SIGTERM, up to `grace` for the
/// leader to exit, then SIGKILL; always reaps the leader.
///
/// A child that already exited is reported as [`TerminationOutcome::Exited`]
/// (its leftover group members still get SIGKILL). A group that vanished
/// between our checks (ESRCH) is not an error.
pub async fn terminate(child: &mut Child, grace: Duration) -> Result<TerminationOutcome, Error> {
    let Some(pid) = child.id() else {
        // tokio forgets the pid once it has reaped the child: it is long gone
        // and so, as far as we can still tell, is its group.
        let status = child.try_wait().map_err(|e| wait_error(None, e))?;
        return status.map(TerminationOutcome::Exited).ok_or_else(|| {
            wait_error(
                None,
                io::Error::other("child has no pid but has not exited"),
            )
        });
    };
    let leader = i32::try_from(pid)
        .map(Pid::from_raw)
        .map_err(|_| wait_error(Some(pid), io::Error::other("pid out of range")))?;
    let target = Target::of(leader);

    // Until we reap the leader its pid (our pgid) cannot be reused, so every
    // signal below reaches the right group. After reaping, a straggler keeps
    // the group id alive; an empty group yields ESRCH.
    if let Some(status) = child.try_wait().map_err(|e| wait_error(Some(pid), e))? {
        target.kill_stragglers();
        tracing::debug!(pid, %status, "child had already exited");
        return Ok(TerminationOutcome::Exited(status));
    }

    target.send(Signal::SIGTERM)?;
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(waited) => {
            let status = waited.map_err(|e| wait_error(Some(pid), e))?;
            target.kill_stragglers();
            tracing::info!(pid, %status, "child ended after SIGTERM");
            Ok(TerminationOutcome::Terminated(status))
        }
        Err(_elapsed) => {
            tracing::warn!(
                pid,
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                "child ignored SIGTERM for the grace period; sending SIGKILL"
            );
            target.send(Signal::SIGKILL)?;
            let status = tokio::time::timeout(KILL_REAP_TIMEOUT, child.wait())
                .await
                .map_err(|_| Error::Unkillable {
                    pid,
                    waited: KILL_REAP_TIMEOUT,
                })?
                .map_err(|e| wait_error(Some(pid), e))?;
            // It may have exited on its own in the instant before SIGKILL.
            if status.signal() == Some(Signal::SIGKILL as i32) {
                Ok(TerminationOutcome::Killed(status))
            } else {
                Ok(TerminationOutcome::Terminated(status))
            }
        }
    }
}

/// Waits for `child` to exit by itself, then SIGKILLs whatever is left of
/// its process group, as the kubelet does when a container's main process
/// exits: a leader that wants its children to finish must wait for them.
///
/// Cancel-safe: dropping the future before the child exits leaves it
/// running and unreaped, so [`terminate`] can still stop it.
pub async fn wait_group(child: &mut Child) -> Result<ExitStatus, Error> {
    let leader = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);
    // Decided before reaping, while the leader's pid still names its group.
    let target = leader.map(Target::of);
    let status = child.wait().await.map_err(|e| wait_error(child.id(), e))?;
    if let Some(target) = target {
        target.kill_stragglers();
    }
    Ok(status)
}

/// Where signals go.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The child leads its own group: signal the whole group.
    Group(Pid),
    /// The child was spawned into our group: signalling that group would hit
    /// us, so only the child is signalled (its own children may survive).
    Process(Pid),
}

impl Target {
    fn of(leader: Pid) -> Self {
        match getpgid(Some(leader)) {
            Ok(pgid) if pgid != leader => {
                tracing::warn!(
                    pid = leader.as_raw(),
                    pgid = pgid.as_raw(),
                    "child does not lead its own process group (spawn it with \
                     spawn_in_process_group); signalling the child alone"
                );
                Target::Process(leader)
            }
            // Leader of its group, or already gone: the group is the target.
            _ => Target::Group(leader),
        }
    }

    /// Sends `signal`; a target that no longer exists is fine.
    fn send(self, signal: Signal) -> Result<(), Error> {
        let (pid, sent) = match self {
            Target::Group(pgid) => (pgid, killpg(pgid, signal)),
            Target::Process(pid) => (pid, kill(pid, signal)),
        };
        match sent {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(Error::Signal {
                pid: pid.as_raw(),
                group: matches!(self, Target::Group(_)),
                signal: signal.as_str(),
                source,
            }),
        }
    }

    /// SIGKILLs whatever is left of a group whose leader has exited.
    fn kill_stragglers(self) {
        let Target::Group(pgid) = self else {
            return;
        };
        match killpg(pgid, Signal::SIGKILL) {
            Ok(()) => tracing::debug!(
                pgid = pgid.as_raw(),
                "killed what was left of the process group"
            ),
            Err(Errno::ESRCH) => {}
            Err(error) => tracing::warn!(
                pgid = pgid.as_raw(),
                %error,
                "cannot kill the rest of the process group"
            ),
        }
    }
}

fn wait_error(pid: Option<u32>, source: io::Error) -> Error {
    Error::Wait { pid, source }
}
