package main

import (
	"testing"
	"time"
)

const ms = int64(time.Millisecond)

// history builds the records of a mutex with two holders; the second enters at `secondEnters`
// while the first leaves at 100 ms, and the first makes a write at 60 ms with its answer.
func history(secondEnters int64, lateWriteAccepted bool) []record {
	return []record{
		{Ev: "lock", Lock: "m", Type: "Mutex", Permits: 1},
		{Ev: "request", Holder: "a", Lock: "m", Mode: "Exclusive", At: 0},
		{Ev: "request", Holder: "b", Lock: "m", Mode: "Exclusive", At: 1 * ms},
		{Ev: "enter", Holder: "a", Lock: "m", Token: 1, At: 10 * ms},
		{Ev: "write", Holder: "a", Lock: "m", Token: 1, Call: 20 * ms, Ret: 21 * ms, Accepted: true},
		{Ev: "enter", Holder: "b", Lock: "m", Token: 2, At: secondEnters},
		{Ev: "write", Holder: "b", Lock: "m", Token: 2, Call: secondEnters + ms, Ret: secondEnters + 2*ms, Accepted: true},
		{Ev: "write", Holder: "a", Lock: "m", Token: 1, Call: 60 * ms, Ret: 61 * ms, Accepted: lateWriteAccepted},
		{Ev: "leave", Holder: "a", Lock: "m", At: 100 * ms},
		{Ev: "released", Holder: "a", Lock: "m", At: 110 * ms},
		{Ev: "leave", Holder: "b", Lock: "m", At: 200 * ms},
		{Ev: "released", Holder: "b", Lock: "m", At: 210 * ms},
	}
}

func TestHoldsOneAfterTheOtherAreLinearizable(t *testing.T) {
	records := history(120*ms, true)
	s := check(records, time.Minute, t.TempDir()+"/h")
	if s.Linearizable != "Ok" || s.Grants != 2 || s.UnsafeOverlaps+s.OverlapsCaught+s.TokenRegressions+s.PermitViolations != 0 {
		t.Fatalf("%+v", s)
	}
}

func TestAnOverlapTheTokenCaughtIsCountedAndStillLinearizable(t *testing.T) {
	// b enters at 40 ms and writes at 41 ms; a's write at 60 ms is refused.
	s := check(history(40*ms, false), time.Minute, t.TempDir()+"/h")
	if s.OverlapsCaught != 1 || s.UnsafeOverlaps != 0 {
		t.Fatalf("%+v", s)
	}
	if s.Linearizable != "Illegal" {
		// a never released before b's grant, and a left normally: the lock granted b while a
		// held it.
		t.Fatalf("a normal hold overlapping another is not linearizable: %+v", s)
	}
}

// lostAt marks a's hold of `history` ended abnormally: its release is abnormal, and its claim
// (a Job's, named as the holder) shows Lost at `at`, before b enters; the lock has no
// lock-delay and a no lease, so b may enter right after.
func lostAt(records []record, at int64) []record {
	records[9].Abnormal = true
	return append(records,
		record{Ev: "phase", Holder: "a", Lock: "m", Phase: "Granted", Token: 1, At: 10 * ms},
		record{Ev: "phase", Holder: "a", Lock: "m", Phase: "Lost", At: at})
}

func TestAnAbnormalEndLetsTheLockMoveOnWhileRefusedWritesStayHarmless(t *testing.T) {
	s := check(lostAt(history(40*ms, false), 30*ms), time.Minute, t.TempDir()+"/h")
	if s.Linearizable != "Ok" || s.OverlapsCaught != 1 || s.UnsafeOverlaps+s.FenceWindowOverlaps != 0 {
		t.Fatalf("%+v", s)
	}
}

func TestAnAcceptedWriteOfAnOlderHolderIsAnUnsafeOverlap(t *testing.T) {
	s := check(lostAt(history(40*ms, true), 30*ms), time.Minute, t.TempDir()+"/h")
	if s.UnsafeOverlaps != 1 || s.FenceWindowOverlaps != 0 || s.Linearizable != "Illegal" {
		t.Fatalf("%+v", s)
	}
}

// zombie builds a lock with a 3 s lock-delay and two holders: `old` (with a 3 s lease) whose
// grant lapsed at 1 s while it was paused, shown by its claim, and which resumed to write at
// 9 s (refused) and leave; `young`, which enters at `youngEnters` and writes right after.
func zombie(kind, oldMode, youngMode string, youngEnters int64) []record {
	return []record{
		{Ev: "lock", Lock: "l", Type: kind, Permits: 1, Delay: 3000},
		{Ev: "request", Holder: "old", Lock: "l", Mode: oldMode, Lease: 3000, At: 0},
		{Ev: "enter", Holder: "old", Lock: "l", Token: 1, At: 10 * ms},
		{Ev: "phase", Holder: "old", Lock: "l", Mode: oldMode, Phase: "Granted", Token: 1, At: 10 * ms},
		{Ev: "phase", Holder: "old", Lock: "l", Mode: oldMode, Phase: "Lost", At: 1000 * ms},
		{Ev: "request", Holder: "young", Lock: "l", Mode: youngMode, At: 20 * ms},
		{Ev: "enter", Holder: "young", Lock: "l", Token: 2, At: youngEnters},
		{Ev: "write", Holder: "young", Lock: "l", Token: 2, Call: youngEnters + ms, Ret: youngEnters + 2*ms, Accepted: true},
		{Ev: "write", Holder: "old", Lock: "l", Token: 1, Call: 9000 * ms, Ret: 9001 * ms, Accepted: false},
		{Ev: "leave", Holder: "old", Lock: "l", At: 9010 * ms},
		{Ev: "released", Holder: "old", Lock: "l", At: 9020 * ms, Abnormal: true},
		{Ev: "leave", Holder: "young", Lock: "l", At: 9100 * ms},
		{Ev: "released", Holder: "young", Lock: "l", At: 9110 * ms},
	}
}

// The fence window of old's hold runs from its abnormal end (1 s) for its lease and the
// lock-delay (3 s + 3 s): young entering at 5 s overlaps old inside it, a violation though
// old's only write after was refused; entering at 8 s, past it, the overlap is one the token
// caught. A writer with a reader overlaps as two writers do; readers never do.
func TestAnOverlapInsideTheFenceWindowIsAViolationWhateverWasWritten(t *testing.T) {
	for _, c := range []struct {
		kind, old, young string
		enters           int64
		inWindow, caught int
	}{
		{"Mutex", "Exclusive", "Exclusive", 5000 * ms, 1, 0},
		{"Mutex", "Exclusive", "Exclusive", 8000 * ms, 0, 1},
		{"ReadWrite", "Shared", "Exclusive", 5000 * ms, 1, 0},
		{"ReadWrite", "Exclusive", "Shared", 8000 * ms, 0, 1},
		{"ReadWrite", "Shared", "Shared", 5000 * ms, 0, 0},
	} {
		s := check(zombie(c.kind, c.old, c.young, c.enters), time.Minute, t.TempDir()+"/h")
		if s.FenceWindowOverlaps != c.inWindow || s.OverlapsCaught != c.caught || s.UnsafeOverlaps != 0 {
			t.Errorf("%s, %s then %s entering at %d ms: %+v", c.kind, c.old, c.young, c.enters/ms, s)
		}
	}
}

// Without a claim to date it earlier (a `lockkeeper run` names its claim itself), the
// abnormal end is the release the test recorded: the window runs from there.
func TestTheFenceWindowRunsFromTheAbnormalReleaseWhenNoClaimDatesItEarlier(t *testing.T) {
	records := zombie("Mutex", "Exclusive", "Exclusive", 8000*ms)
	records = append(records[:3], records[5:]...) // no phases of old's claim
	s := check(records, time.Minute, t.TempDir()+"/h")
	if s.FenceWindowOverlaps != 1 || s.OverlapsCaught != 0 {
		t.Fatalf("%+v", s)
	}
}

// unended builds a Semaphore of 2 whose holders a and b enter and c enters at 500 ms, and a
// Mutex whose holder d enters and e enters at 700 ms; a, b and d record an end (leave) at
// 400 ms only when `ended`.
func unended(ended bool) []record {
	records := []record{
		{Ev: "lock", Lock: "s", Type: "Semaphore", Permits: 2},
		{Ev: "lock", Lock: "m", Type: "Mutex", Permits: 1},
	}
	enter := func(holder, lock, mode string, token, at int64) {
		records = append(records,
			record{Ev: "request", Holder: holder, Lock: lock, Mode: mode, At: 0},
			record{Ev: "enter", Holder: holder, Lock: lock, Token: token, At: at})
	}
	enter("a", "s", "Shared", 1, 10*ms)
	enter("b", "s", "Shared", 2, 20*ms)
	enter("d", "m", "Exclusive", 1, 10*ms)
	if ended {
		for _, h := range []record{{Holder: "a", Lock: "s"}, {Holder: "b", Lock: "s"}, {Holder: "d", Lock: "m"}} {
			records = append(records, record{Ev: "leave", Holder: h.Holder, Lock: h.Lock, At: 400 * ms})
		}
	}
	enter("c", "s", "Shared", 3, 500*ms)
	enter("e", "m", "Exclusive", 2, 700*ms)
	for _, h := range []record{{Holder: "c", Lock: "s"}, {Holder: "e", Lock: "m"}} {
		records = append(records,
			record{Ev: "leave", Holder: h.Holder, Lock: h.Lock, At: 800 * ms},
			record{Ev: "released", Holder: h.Holder, Lock: h.Lock, At: 810 * ms})
	}
	return append(records, record{Ev: "fault", Kind: "kill-9-leading-controller", Start: 900 * ms, End: 1000 * ms})
}

// A hold with an enter and neither leave nor release holds until the end of the run (the
// fault's end, the latest time recorded): the semaphore's two open holds leave no permit for
// c, and the mutex's open hold overlaps e's.
func TestAnOpenHoldHoldsUntilTheEndOfTheRun(t *testing.T) {
	s := check(unended(false), time.Minute, t.TempDir()+"/h")
	if s.OpenHolds != 3 || s.PermitViolations != 1 || s.OverlapsCaught != 1 || s.FenceWindowOverlaps != 0 {
		t.Fatalf("%+v", s)
	}
	s = check(unended(true), time.Minute, t.TempDir()+"/h")
	if s.OpenHolds != 0 || s.PermitViolations+s.OverlapsCaught+s.UnsafeOverlaps != 0 {
		t.Fatalf("%+v", s)
	}
}

// claimsShown builds the claims' phases of one lock as the watch recorded them: each is
// [holder, mode, phase, resourceVersion], recorded 1 ms apart in the order given.
func claimsShown(kind string, permits int, shown ...[4]string) []record {
	records := []record{{Ev: "lock", Lock: "l", Type: kind, Permits: permits}}
	for i, c := range shown {
		records = append(records, record{Ev: "phase", Holder: c[0], Lock: "l", Mode: c[1],
			Phase: c[2], Token: int64(i + 1), Version: c[3], At: int64(i) * ms})
	}
	return records
}

func TestTheAPINeverShowsMoreGrantedClaimsThanTheLockAdmits(t *testing.T) {
	for _, c := range []struct {
		name       string
		records    []record
		violations int
	}{
		{"a Mutex granted while its holder still shows Granted",
			claimsShown("Mutex", 1, [4]string{"a", "Exclusive", "Granted", "10"},
				[4]string{"b", "Exclusive", "Granted", "11"}, [4]string{"a", "Exclusive", "Released", "12"}), 1},
		{"a Mutex's release recorded after the next grant but made before it (resourceVersion order)",
			claimsShown("Mutex", 1, [4]string{"a", "Exclusive", "Granted", "10"},
				[4]string{"b", "Exclusive", "Granted", "12"}, [4]string{"a", "Exclusive", "Deleted", "11"}), 0},
		{"a Semaphore of 2 showing three",
			claimsShown("Semaphore", 2, [4]string{"a", "Exclusive", "Granted", "10"},
				[4]string{"b", "Exclusive", "Granted", "11"}, [4]string{"c", "Exclusive", "Granted", "12"}), 1},
		{"a Semaphore of 2 showing two",
			claimsShown("Semaphore", 2, [4]string{"a", "Exclusive", "Granted", "10"},
				[4]string{"b", "Exclusive", "Granted", "11"}, [4]string{"a", "Exclusive", "Released", "12"},
				[4]string{"c", "Exclusive", "Granted", "13"}), 0},
		{"a ReadWrite writer beside a reader",
			claimsShown("ReadWrite", 1, [4]string{"a", "Shared", "Granted", "10"},
				[4]string{"b", "Exclusive", "Granted", "11"}), 1},
		{"a ReadWrite lock's readers",
			claimsShown("ReadWrite", 1, [4]string{"a", "Shared", "Granted", "10"},
				[4]string{"b", "Shared", "Granted", "11"}, [4]string{"b", "Shared", "Lost", "12"},
				[4]string{"c", "Shared", "Granted", "13"}), 0},
	} {
		s := check(c.records, time.Minute, t.TempDir()+"/h")
		if s.APIHolderViolations != c.violations {
			t.Errorf("%s: %d violations, want %d (%+v)", c.name, s.APIHolderViolations, c.violations, s)
		}
	}
}
