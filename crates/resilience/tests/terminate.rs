//! `terminate` against real child processes (`sh -c`).
//!
//! This test binary makes itself a child subreaper, so grandchildren orphaned
//! by a killed shell are re-parented to us instead of to PID 1 (which, in a
//! container, may never reap them). That lets the tests reap a grandchild,
//! see which signal ended it, and then prove with `kill(pid, 0)` → ESRCH that
//! it is truly gone. It lives in its own test binary because the subreaper
//! flag is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use resilience::terminate::{TerminationOutcome, spawn_in_process_group, terminate, wait_group};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Long enough to never be the reason a test passes, short enough to keep the run fast.
const GRACE: Duration = Duration::from_millis(300);

fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

/// Spawns `sh -c script` in its own process group with stdout piped.
fn spawn_sh(script: &str) -> Child {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).stdout(Stdio::piped());
    spawn_in_process_group(&mut cmd).unwrap()
}

/// Reads the first line the child prints (used to announce a pid or "ready").
async fn first_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("child did not print in time")
        .unwrap()
        .expect("child closed stdout without printing")
}

/// Reaps an orphaned grandchild re-parented to us and returns how it ended.
async fn reap_grandchild(pid: Pid) -> WaitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(status) => return status,
            Err(e) => panic!("grandchild {pid} was not reaped in time: {e}"),
        }
    }
}

fn assert_gone(pid: Pid) {
    assert_eq!(
        kill(pid, None),
        Err(Errno::ESRCH),
        "process {pid} still exists"
    );
}

#[tokio::test]
async fn child_that_exits_on_sigterm_is_reported_terminated() {
    let mut child = spawn_sh("echo ready; exec sleep 1000");
    assert_eq!(first_line(&mut child).await, "ready");
    let outcome = terminate(&mut child, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TerminationOutcome::Terminated(_)),
        "{outcome:?}"
    );
    assert_eq!(outcome.status().signal(), Some(Signal::SIGTERM as i32));
}

#[tokio::test]
async fn child_that_traps_sigterm_is_killed_after_the_grace_period() {
    let mut child = spawn_sh("trap '' TERM; echo ready; while :; do sleep 1; done");
    assert_eq!(first_line(&mut child).await, "ready");
    let started = Instant::now();
    let outcome = terminate(&mut child, GRACE).await.unwrap();
    let took = started.elapsed();
    assert!(
        matches!(outcome, TerminationOutcome::Killed(_)),
        "{outcome:?}"
    );
    assert_eq!(outcome.status().signal(), Some(Signal::SIGKILL as i32));
    assert!(
        took >= GRACE,
        "SIGKILL came before the grace period ended: {took:?}"
    );
    // Generous upper bound (10×): the kill itself is immediate.
    assert!(took < GRACE * 10, "took {took:?}");
}

#[tokio::test]
async fn grandchild_in_the_process_group_is_killed_with_the_child() {
    become_subreaper();
    // Both the shell and its background sleep ignore SIGTERM; only the group
    // SIGKILL can end them.
    let mut child = spawn_sh("trap '' TERM; sleep 1000 & echo $!; wait");
    let grandchild = Pid::from_raw(first_line(&mut child).await.parse().unwrap());
    let outcome = terminate(&mut child, GRACE).await.unwrap();
    assert!(
        matches!(outcome, TerminationOutcome::Killed(_)),
        "{outcome:?}"
    );

    let status = reap_grandchild(grandchild).await;
    assert_eq!(
        status,
        WaitStatus::Signaled(grandchild, Signal::SIGKILL, false)
    );
    assert_gone(grandchild);
}

#[tokio::test]
async fn grandchild_that_outlives_its_terminated_parent_is_killed_too() {
    become_subreaper();
    // The background sleep inherits "ignore TERM"; the shell restores the
    // default handler before announcing the pid (so our SIGTERM cannot
    // arrive while the shell still ignores it), and SIGTERM ends the shell
    // but not the sleep.
    let mut child = spawn_sh("trap '' TERM; sleep 1000 & pid=$!; trap - TERM; echo $pid; wait");
    let grandchild = Pid::from_raw(first_line(&mut child).await.parse().unwrap());
    let outcome = terminate(&mut child, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TerminationOutcome::Terminated(_)),
        "{outcome:?}"
    );

    let status = reap_grandchild(grandchild).await;
    assert_eq!(
        status,
        WaitStatus::Signaled(grandchild, Signal::SIGKILL, false)
    );
    assert_gone(grandchild);
}

#[tokio::test]
async fn grandchild_that_obeys_sigterm_ends_with_its_parent() {
    become_subreaper();
    let mut child = spawn_sh("sleep 1000 & echo $!; wait");
    let grandchild = Pid::from_raw(first_line(&mut child).await.parse().unwrap());
    let outcome = terminate(&mut child, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TerminationOutcome::Terminated(_)),
        "{outcome:?}"
    );

    let status = reap_grandchild(grandchild).await;
    assert!(
        matches!(
            status,
            WaitStatus::Signaled(_, Signal::SIGTERM | Signal::SIGKILL, _)
        ),
        "{status:?}"
    );
    assert_gone(grandchild);
}

#[tokio::test]
async fn child_that_already_exited_is_reported_exited() {
    let mut child = spawn_sh("exit 3");
    // Wait until it is a zombie: exited, but not reaped by anyone yet.
    let stat_path = format!("/proc/{}/stat", child.id().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&stat_path)
        .unwrap()
        .rsplit(") ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        != Some("Z")
    {
        assert!(Instant::now() < deadline, "child did not exit in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = terminate(&mut child, GRACE).await.unwrap();
    assert!(
        matches!(outcome, TerminationOutcome::Exited(_)),
        "{outcome:?}"
    );
    assert_eq!(outcome.status().code(), Some(3));
}

#[tokio::test]
async fn child_already_reaped_by_its_owner_is_reported_exited() {
    let mut child = spawn_sh("exit 0");
    child.wait().await.unwrap();
    let outcome = terminate(&mut child, GRACE).await.unwrap();
    assert!(
        matches!(outcome, TerminationOutcome::Exited(s) if s.success()),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn child_outside_its_own_process_group_is_still_terminated_alone() {
    // Spawned into our own group by mistake: signalling the group would hit
    // this test process, so only the child may be signalled.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo ready; exec sleep 1000")
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    assert_eq!(first_line(&mut child).await, "ready");
    let outcome = terminate(&mut child, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TerminationOutcome::Terminated(_)),
        "{outcome:?}"
    );
    assert_eq!(outcome.status().signal(), Some(Signal::SIGTERM as i32));
}

#[tokio::test]
async fn wait_group_kills_what_is_left_once_the_leader_exits_by_itself() {
    become_subreaper();
    let mut child = spawn_sh("sleep 1000 & echo $!; exit 3");
    let grandchild = Pid::from_raw(first_line(&mut child).await.parse().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(10), wait_group(&mut child))
        .await
        .expect("the leader exits at once")
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let status = reap_grandchild(grandchild).await;
    assert_eq!(
        status,
        WaitStatus::Signaled(grandchild, Signal::SIGKILL, false)
    );
    assert_gone(grandchild);
}
