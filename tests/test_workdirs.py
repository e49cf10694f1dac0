"""Work directories of killed runs are removed by the next run; live ones never are."""

import json
import os
import signal
import subprocess
import sys
import time

from deepbof_tf import workdirs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CLAIM = ("import sys, time\n"
          "from deepbof_tf import workdirs\n"
          "print(workdirs.claim_work_dir(sys.argv[1]), flush=True)\n"
          "time.sleep(600)\n")


def _claim_in_subprocess(output_dir):
  proc = subprocess.Popen([sys.executable, "-c", _CLAIM, output_dir], stdout=subprocess.PIPE,
                          text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO,
                                                        TF_CPP_MIN_LOG_LEVEL="3"))
  return proc, proc.stdout.readline().strip()


def test_killed_runs_are_removed_and_live_ones_kept(tmp_path):
  output = str(tmp_path / "dataset")
  killed, killed_dir = _claim_in_subprocess(output)
  live, live_dir = _claim_in_subprocess(output)
  try:
    assert os.path.isdir(killed_dir) and os.path.isdir(live_dir)
    assert killed_dir.startswith(output + ".incomplete-")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    # Without an owner record: kept while young, removed once a day old.
    young, old = tmp_path / "dataset.incomplete-young", tmp_path / "dataset.incomplete-old"
    young.mkdir()
    old.mkdir()
    day_ago = time.time() - 2 * workdirs.UNOWNED_MAX_AGE_SECONDS
    os.utime(old, (day_ago, day_ago))
    # Another host's run (we cannot tell whether it lives) and another output's work dir.
    foreign = tmp_path / "dataset.incomplete-foreign"
    foreign.mkdir()
    record = {**workdirs.owner_record(), "host": "some-other-host", "pid": 999999}
    (foreign / workdirs.OWNER_FILE).write_text(json.dumps(record))
    unrelated = tmp_path / "other.incomplete-1234"
    unrelated.mkdir()
    # A record whose pid now belongs to another process (pid reuse) is stale too.
    reused = tmp_path / "dataset.incomplete-reused"
    reused.mkdir()
    record = {**workdirs.owner_record(), "process_start": "1"}
    (reused / workdirs.OWNER_FILE).write_text(json.dumps(record))

    removed = workdirs.remove_stale_work_dirs(output)
    assert sorted(removed) == sorted([killed_dir, str(old), str(reused)])
    for kept in (live_dir, young, foreign, unrelated):
      assert os.path.isdir(kept), kept
    assert workdirs.remove_stale_work_dirs(output) == []  # nothing more to do
  finally:
    live.kill()
    live.wait(timeout=30)
  assert workdirs.remove_stale_work_dirs(output) == [live_dir]  # now it is gone too
