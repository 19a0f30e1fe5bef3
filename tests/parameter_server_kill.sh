#!/usr/bin/env bash
# Runs parameter_server_kill (worker rank 2 of 4 dies by SIGKILL at step 4)
# under mpirun --enable-recovery, so Open MPI lets the others run on:
# under SSP the server drops rank 2 and the other workers finish; under BSP
# the server and every surviving worker report an error naming rank 2.
# Then (mode server) server rank 1 of 2 dies: both workers' errors name it
# and the keys it held, and server 0 finishes.
#   usage: parameter_server_kill.sh MPIRUN PROGRAM
set -u
mpirun=$1 prog=$2
fail=0
for mode in ssp bsp server; do
  out=$(timeout 90 "$mpirun" --oversubscribe --enable-recovery -np 4 "$prog" "$mode" 2>&1)
  rc=$?
  echo "== $mode (mpirun exit status $rc)"
  echo "$out"
  [ "$rc" -eq 124 ] && { echo "FAIL: $mode hung (killed after 90 s)"; fail=1; continue; }
  if [ "$mode" = ssp ]; then
    echo "$out" | grep -q "^server 0: finished; dropped: rank 2 at clock 4 (it sent nothing" || { echo "FAIL: ssp: the server did not drop rank 2"; fail=1; }
    for r in 1 3; do
      echo "$out" | grep -q "^worker $r: finished, w\[0\] = 2.000" || { echo "FAIL: ssp: worker $r did not finish training"; fail=1; }
    done
  elif [ "$mode" = server ]; then
    for r in 2 3; do
      echo "$out" | grep -q "^worker $r: error: .*server rank 1 (holding w\[128:256))" || { echo "FAIL: server: worker $r did not name server rank 1 and its keys"; fail=1; }
    done
    # the workers' heartbeats kept server 0 from taking their wait on server 1 for death: it drops
    # them when they report the failure, with the workers' own reason
    for r in 2 3; do
      echo "$out" | grep -q "^server 0: finished; dropped:.* rank $r at clock [0-9]* (it failed: .*server rank 1 (holding w\[128:256))" || { echo "FAIL: server: server 0 did not drop rank $r with its reason"; fail=1; }
    done
  else
    echo "$out" | grep -q "^server 0: error: .*worker rank 2 died" || { echo "FAIL: bsp: the server did not name rank 2"; fail=1; }
    for r in 1 3; do
      echo "$out" | grep -q "^worker $r: error: .*worker rank 2 died.*under BSP" || { echo "FAIL: bsp: worker $r did not name rank 2"; fail=1; }
    done
  fi
done
exit $fail
