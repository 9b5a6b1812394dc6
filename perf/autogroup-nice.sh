#!/bin/sh
# Runs a command at nice -10 in an autogroup of nice -10 (use under `setsid -w`, so the
# command has a session, hence an autogroup, of its own): like nbd-side-by-side.sh's NICE=-10.
echo -10 > /proc/self/autogroup
exec nice -n -10 "$@"
