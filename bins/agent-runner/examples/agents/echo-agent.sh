#!/bin/sh
# A sample agent for agent-runner: prints what it was given, "works" for a
# moment in its private workspace, and exits 0. Replace it with your agent.
#
#   stdin            the incident JSON (one line)
#   INCIDENT_ID      the incident's id
#   CLUSTER          the stream (cluster) it came from
#   SEVERITY         info | warning | error | critical
#   AGENT_WORKSPACE  this agent's temporary directory (also the cwd), removed afterwards
#
# On timeout or shutdown it gets SIGTERM (to its whole process group), then
# SIGKILL after the kill grace; the trap shows a clean early exit.
set -eu
trap 'echo "echo-agent: $INCIDENT_ID interrupted"; exit 143' TERM

incident=$(cat)
echo "echo-agent: $SEVERITY incident $INCIDENT_ID from $CLUSTER"
echo "echo-agent: payload $incident"
printf '%s\n' "$incident" > report.json
sleep "${ECHO_AGENT_SECONDS:-2}"
echo "echo-agent: done in $(pwd)"
