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

func TestAnAbnormalEndLetsTheLockMoveOnWhileRefusedWritesStayHarmless(t *testing.T) {
	records := history(40*ms, false)
	records[9].Abnormal = true // a's grant ended under it (lapsed, lost)
	s := check(records, time.Minute, t.TempDir()+"/h")
	if s.Linearizable != "Ok" || s.OverlapsCaught != 1 || s.UnsafeOverlaps != 0 {
		t.Fatalf("%+v", s)
	}
}

func TestAnAcceptedWriteOfAnOlderHolderIsAnUnsafeOverlap(t *testing.T) {
	records := history(40*ms, true)
	records[9].Abnormal = true
	s := check(records, time.Minute, t.TempDir()+"/h")
	if s.UnsafeOverlaps != 1 || s.Linearizable != "Illegal" {
		t.Fatalf("%+v", s)
	}
}

func TestASemaphoreWithMoreHoldersThanPermitsIsAViolation(t *testing.T) {
	records := []record{{Ev: "lock", Lock: "s", Type: "Semaphore", Permits: 2}}
	for i, holder := range []string{"a", "b", "c"} {
		at := int64(i) * ms
		records = append(records,
			record{Ev: "request", Holder: holder, Lock: "s", Mode: "Exclusive", At: at},
			record{Ev: "enter", Holder: holder, Lock: "s", Token: int64(i + 1), At: 10*ms + at},
			record{Ev: "leave", Holder: holder, Lock: "s", At: 100 * ms},
			record{Ev: "released", Holder: holder, Lock: "s", At: 110 * ms})
	}
	s := check(records, time.Minute, t.TempDir()+"/h")
	if s.PermitViolations != 1 || s.Linearizable != "Illegal" {
		t.Fatalf("%+v", s)
	}
}

func TestTokensThatGoBackAndGrantsAfterReleaseAreCounted(t *testing.T) {
	records := history(120*ms, true)
	records[5].Token = 1 // b's grant after a's hold reuses a's token
	records[6].Token = 1
	records = append(records,
		record{Ev: "phase", Holder: "a", Lock: "m", Phase: "Granted", Token: 1, At: 10 * ms},
		record{Ev: "phase", Holder: "a", Lock: "m", Phase: "Released", At: 110 * ms},
		record{Ev: "phase", Holder: "b", Lock: "m", Phase: "Granted", Token: 1, At: 115 * ms},
		record{Ev: "phase", Holder: "b", Lock: "m", Phase: "Deleted", At: 210 * ms},
		record{Ev: "phase", Holder: "a", Lock: "m", Phase: "Granted", Token: 3, At: 300 * ms},
		record{Ev: "exit", Holder: "a", Code: 1},
		record{Ev: "stuck", Holder: "c", Phase: "Waiting"})
	s := check(records, time.Minute, t.TempDir()+"/h")
	if s.TokenRegressions != 1 || s.GrantedTwice != 1 || s.UndocumentedExits != 1 || s.StuckClaims != 1 || s.Linearizable != "Illegal" {
		t.Fatalf("%+v", s)
	}
}

// A semaphore grant whose Granted status lagged (an API error storm) shows after a grant
// with a higher token ended: both held permits together, so no regression. On a ReadWrite
// lock the same order is one when either grant was a writer, and on a Mutex always.
func TestALateShownGrantIsARegressionOnlyWhereTheGrantsExcludeEachOther(t *testing.T) {
	shownLate := func(kind, oldMode, youngMode string) []record {
		return []record{
			{Ev: "lock", Lock: "l", Type: kind, Permits: 2},
			{Ev: "phase", Holder: "young", Lock: "l", Mode: youngMode, Phase: "Granted", Token: 224, At: 10 * ms},
			{Ev: "phase", Holder: "young", Lock: "l", Mode: youngMode, Phase: "Deleted", At: 20 * ms},
			{Ev: "phase", Holder: "old", Lock: "l", Mode: oldMode, Phase: "Granted", Token: 219, At: 30 * ms},
		}
	}
	for _, c := range []struct {
		kind, old, young string
		regressions      int
	}{
		{"Semaphore", "Shared", "Shared", 0},
		{"Semaphore", "Exclusive", "Exclusive", 0},
		{"ReadWrite", "Shared", "Shared", 0},
		{"ReadWrite", "Shared", "Exclusive", 1},
		{"ReadWrite", "Exclusive", "Shared", 1},
		{"Mutex", "Exclusive", "Exclusive", 1},
	} {
		s := check(shownLate(c.kind, c.old, c.young), time.Minute, t.TempDir()+"/h")
		if s.TokenRegressions != c.regressions {
			t.Errorf("%s: a %s grant shown after a %s grant ended: %d regressions, want %d", c.kind, c.old, c.young, s.TokenRegressions, c.regressions)
		}
	}
}
