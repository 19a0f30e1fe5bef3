#!/usr/bin/env bash
# Runs faults_mpi_kill (rank 1 dies by SIGKILL between two allreduces) under
# mpirun with --enable-recovery, so Open MPI lets the other ranks run on, and
# checks that every survivor reported the second allreduce by name within its
# 2 s deadline (plus start-up), and that none hung or returned data.
#   usage: faults_mpi_kill.sh MPIRUN PROGRAM NP
set -u
mpirun=$1 prog=$2 np=$3
start=$(date +%s)
out=$(timeout 60 "$mpirun" --oversubscribe --enable-recovery -np "$np" "$prog" 2>&1)
rc=$?
took=$(( $(date +%s) - start ))
echo "$out"
echo "mpirun exit status $rc after ${took} s"
[ "$rc" -eq 124 ] && { echo "FAIL: hung (killed after 60 s)"; exit 1; }
fail=0
for r in $(seq 0 $((np - 1))); do
  [ "$r" -eq 1 ] && continue
  line=$(echo "$out" | grep "^survivor $r ")
  if ! echo "$line" | grep -q "allreduce(f32 x 1000, sum) #2 on rank $r"; then
    echo "FAIL: survivor $r did not name the call: '$line'"
    fail=1
  fi
done
exit $fail
