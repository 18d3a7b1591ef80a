"""Adds up the chaos runs' summaries (one JSON object per line): prints the total as one JSON
line and exits 0 once the runs reach GRANTS grants and every fault kind EACH faults, 1 before.
With --progress, prints how far the runs are instead."""
import json
import sys

# The fault kinds of tests/chaos.rs (FAULTS).
FAULT_KINDS = 13
COUNTS = ["grants", "open_holds", "fence_window_overlaps", "overlaps_caught_by_token",
          "unsafe_overlaps", "token_regressions", "permit_violations",
          "api_holder_count_violations", "granted_twice", "stuck_claims", "undocumented_exits",
          "replaced_jobs_run"]


def total(lines):
    runs = [json.loads(line) for line in lines if line.strip()]
    # A summary from before a count was added has none of it.
    result = {count: sum(run.get(count, 0) for run in runs) for count in COUNTS}
    result["runs"] = len(runs)
    result["seeds"] = [run["seed"] for run in runs]
    result["faults"], result["longest_grant_pause_ms"] = {}, {}
    for run in runs:
        for kind, n in run["faults"].items():
            result["faults"][kind] = result["faults"].get(kind, 0) + n
        for kind, ms in run["longest_grant_pause_ms"].items():
            result["longest_grant_pause_ms"][kind] = max(ms, result["longest_grant_pause_ms"].get(kind, 0))
    verdicts = {run["linearizable"] for run in runs}
    result["linearizable"] = "Ok" if verdicts == {"Ok"} else ",".join(sorted(verdicts)) or "no run"
    return result


def main(argv):
    progress = argv[1] == "--progress"
    path, goal, each = argv[-3], int(argv[-2]), int(argv[-1])
    with open(path) as runs:
        result = total(runs.readlines())
    fewest = min(result["faults"].values()) if len(result["faults"]) == FAULT_KINDS else 0
    if progress:
        print(f"{result['grants']}/{goal} grants, fewest faults of a kind {fewest}/{each}")
        return 0
    print(json.dumps(result, sort_keys=True))
    return 0 if result["grants"] >= goal and fewest >= each else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
