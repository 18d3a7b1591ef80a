// historycheck judges the history a lockkeeper chaos run recorded: it checks that each
// lock's history is linearizable against a sequential model of a lock guarding a fenced
// resource (with Porcupine), and counts the invariants directly: overlapping exclusive
// holds (caught by the fencing token, or not), more holders than a lock allows, fencing
// tokens that went back, claims granted again after their release, stuck claims, and
// undocumented exit codes of `lockkeeper run`. It prints one JSON summary line.
//
// Usage: historycheck HISTORY.jsonl
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// record is one line of the history; which fields are set depends on ev.
type record struct {
	Ev       string `json:"ev"`
	Holder   string `json:"holder"`
	Lock     string `json:"lock"`
	Type     string `json:"type"`     // lock: Mutex, Semaphore, ReadWrite
	Permits  int    `json:"permits"`  // lock
	Mode     string `json:"mode"`     // request, phase: Exclusive, Shared
	Token    int64  `json:"token"`    // enter, write, read, phase
	At       int64  `json:"at"`       // request, enter, leave, released, phase, stuck, exit
	Call     int64  `json:"call"`     // write, read
	Ret      int64  `json:"ret"`      // write, read
	Accepted bool   `json:"accepted"` // write, read
	Abnormal bool   `json:"abnormal"` // released: the hold ended without the holder leaving first
	Phase    string `json:"phase"`    // phase (Deleted when the claim is gone), stuck
	Code     int    `json:"code"`     // exit
	Kind     string `json:"kind"`     // fault
	Start    int64  `json:"start"`    // fault
	End      int64  `json:"end"`      // fault
}

// hold is everything recorded about one holder (one claim).
type hold struct {
	holder    string
	lock      string
	exclusive bool
	requested int64
	entered   bool
	enter     int64
	token     int64
	left      bool
	leave     int64
	released  int64
	abnormal  bool
	requests  []record
}

type lockInfo struct {
	kind    string
	permits int
}

type summary struct {
	Grants            int              `json:"grants"`
	Faults            map[string]int   `json:"faults"`
	OverlapsCaught    int              `json:"overlaps_caught_by_token"`
	UnsafeOverlaps    int              `json:"unsafe_overlaps"`
	TokenRegressions  int              `json:"token_regressions"`
	PermitViolations  int              `json:"permit_violations"`
	GrantedTwice      int              `json:"granted_twice"`
	StuckClaims       int              `json:"stuck_claims"`
	UndocumentedExits int              `json:"undocumented_exits"`
	Linearizable      string           `json:"linearizable"`
	LongestPauseMs    map[string]int64 `json:"longest_grant_pause_ms"`
}

// The exit codes `lockkeeper run` documents: the command's 0, 75 (not granted in time),
// 76 (the grant ended while the command ran), and 128+signal for a run stopped by one.
var documentedExits = map[int]bool{0: true, 75: true, 76: true, 130: true, 143: true}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: historycheck HISTORY.jsonl")
		os.Exit(2)
	}
	records, err := read(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "historycheck:", err)
		os.Exit(2)
	}
	out, err := json.Marshal(check(records, 5*time.Minute, strings.TrimSuffix(os.Args[1], ".jsonl")))
	if err != nil {
		fmt.Fprintln(os.Stderr, "historycheck:", err)
		os.Exit(2)
	}
	fmt.Println(string(out))
}

func read(path string) ([]record, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	var records []record
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; scanner.Scan(); line++ {
		if len(scanner.Bytes()) == 0 {
			continue
		}
		var r record
		if err := json.Unmarshal(scanner.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, line, err)
		}
		records = append(records, r)
	}
	return records, scanner.Err()
}

func check(records []record, timeout time.Duration, visualize string) summary {
	locks := map[string]lockInfo{}
	holds := map[string]*hold{}
	get := func(r record) *hold {
		h, ok := holds[r.Holder]
		if !ok {
			h = &hold{holder: r.Holder, lock: r.Lock}
			holds[r.Holder] = h
		}
		return h
	}
	s := summary{Faults: map[string]int{}, LongestPauseMs: map[string]int64{}}
	var faults []record
	phases := map[string][]record{}
	for _, r := range records {
		switch r.Ev {
		case "lock":
			locks[r.Lock] = lockInfo{kind: r.Type, permits: r.Permits}
		case "request":
			h := get(r)
			h.requested = r.At
			h.exclusive = r.Mode == "Exclusive"
		case "enter":
			h := get(r)
			if h.entered {
				s.GrantedTwice++ // a holder's workload ran twice
			}
			h.entered, h.enter, h.token = true, r.At, r.Token
		case "leave":
			h := get(r)
			h.left, h.leave = true, r.At
		case "write", "read":
			h := get(r)
			h.requests = append(h.requests, r)
		case "released":
			h := get(r)
			h.released, h.abnormal = r.At, r.Abnormal
		case "phase":
			phases[r.Holder] = append(phases[r.Holder], r)
		case "stuck":
			s.StuckClaims++
		case "exit":
			if !documentedExits[r.Code] {
				s.UndocumentedExits++
			}
		case "fault":
			s.Faults[r.Kind]++
			faults = append(faults, r)
		}
	}
	s.GrantedTwice += grantedAfterRelease(phases)
	var allPhases []record
	for _, seen := range phases {
		allPhases = append(allPhases, seen...)
	}
	s.TokenRegressions = tokenRegressions(allPhases, locks)
	byLock := map[string][]*hold{}
	for _, h := range holds {
		if h.entered {
			s.Grants++
			byLock[h.lock] = append(byLock[h.lock], h)
		}
	}
	for name, lockHolds := range byLock {
		sort.Slice(lockHolds, func(i, j int) bool { return lockHolds[i].enter < lockHolds[j].enter })
		caught, unsafe := overlaps(lockHolds)
		s.OverlapsCaught += caught
		s.UnsafeOverlaps += unsafe
		s.PermitViolations += permitViolations(lockHolds, locks[name])
	}
	s.Linearizable = string(linearizable(byLock, locks, timeout, visualize))
	for kind, pause := range longestPauses(holds, faults) {
		s.LongestPauseMs[kind] = pause
	}
	return s
}

// end is when a hold ended for the checks: the holder's leave, or its release if it never
// left (killed).
func (h *hold) end() int64 {
	if h.left {
		return h.leave
	}
	return h.released
}

// overlaps counts pairs of exclusive holds of one lock that overlapped in time: caught when
// every request the older holder made after the newer one entered was refused by the
// resource, unsafe when one was accepted.
func overlaps(holds []*hold) (caught, unsafe int) {
	for i, older := range holds {
		if !older.exclusive {
			continue
		}
		for _, newer := range holds[i+1:] {
			if !newer.exclusive || newer.enter >= older.end() {
				continue
			}
			a, b := older, newer
			if a.token > b.token {
				a, b = b, a
			}
			accepted := false
			for _, r := range a.requests {
				if r.Call >= b.enter && r.Accepted {
					accepted = true
				}
			}
			if accepted {
				unsafe++
			} else {
				caught++
			}
		}
	}
	return caught, unsafe
}

// tokenRegressions counts grants, as the API server showed them, whose fencing token is
// not larger than the token of a grant of the same lock that it had shown ended (the claim
// no longer Granted, or deleted) before, where the two grants could not have held together.
// Grants that can hold together (a semaphore's permits, readers) may show in any order, and
// one may show after the other ended: its status write can lag behind its admission in
// ZooKeeper (an API error storm), and a lower token was admitted no later than a higher one.
// Whether such a late grant really held is what the permit count checks.
func tokenRegressions(phases []record, locks map[string]lockInfo) int {
	sort.Slice(phases, func(i, j int) bool { return phases[i].At < phases[j].At })
	type grant struct {
		token     int64
		exclusive bool
	}
	granted := map[string]grant{}
	// The highest token shown ended per lock: of any grant, and of exclusive grants.
	endedMax := map[string]int64{}
	endedMaxExclusive := map[string]int64{}
	regressions := 0
	for _, p := range phases {
		was, wasGranted := granted[p.Holder]
		if p.Phase == "Granted" {
			exclusive := holdsAlone(locks[p.Lock], p.Mode)
			against := endedMaxExclusive
			if exclusive {
				against = endedMax
			}
			if ended, ok := against[p.Lock]; ok && p.Token <= ended && (!wasGranted || was.token != p.Token) {
				regressions++
			}
			granted[p.Holder] = grant{p.Token, exclusive}
			continue
		}
		if wasGranted {
			raise(endedMax, p.Lock, was.token)
			if was.exclusive {
				raise(endedMaxExclusive, p.Lock, was.token)
			}
			delete(granted, p.Holder)
		}
	}
	return regressions
}

// holdsAlone tells whether a grant in `mode` on `lock` excludes every other grant: on a
// Mutex always, on a ReadWrite lock when Exclusive, on a Semaphore never (its permits are
// counted instead). A mode not recorded counts as exclusive.
func holdsAlone(lock lockInfo, mode string) bool {
	switch lock.kind {
	case "Semaphore":
		return false
	case "ReadWrite":
		return mode != "Shared"
	default:
		return true
	}
}

func raise(max map[string]int64, lock string, token int64) {
	if current, ok := max[lock]; !ok || token > current {
		max[lock] = token
	}
}

// permitViolations counts the grants that entered while the lock already had as many
// holders as it allows (a semaphore's permits; a writer, or readers beside a writer).
func permitViolations(holds []*hold, lock lockInfo) int {
	violations := 0
	for i, h := range holds {
		var exclusive, shared int
		for _, other := range holds[:i] {
			if other.end() > h.enter {
				if other.exclusive && lock.kind != "Semaphore" {
					exclusive++
				} else {
					shared++
				}
			}
		}
		switch lock.kind {
		case "Semaphore":
			if shared+1 > lock.permits {
				violations++
			}
		case "ReadWrite":
			if exclusive > 0 || (h.exclusive && shared > 0) {
				violations++
			}
		}
	}
	return violations
}

// grantedAfterRelease counts claims the API showed Granted again after Released or Expired.
func grantedAfterRelease(phases map[string][]record) int {
	twice := 0
	for _, seen := range phases {
		sort.Slice(seen, func(i, j int) bool { return seen[i].At < seen[j].At })
		ended := false
		for _, p := range seen {
			switch p.Phase {
			case "Released", "Expired":
				ended = true
			case "Granted":
				if ended {
					twice++
					ended = false
				}
			}
		}
	}
	return twice
}

// longestPauses: for each fault kind, the longest time without a grant (an enter on any
// lock) that overlapped one of its faults.
func longestPauses(holds map[string]*hold, faults []record) map[string]int64 {
	var enters []int64
	for _, h := range holds {
		if h.entered {
			enters = append(enters, h.enter)
		}
	}
	sort.Slice(enters, func(i, j int) bool { return enters[i] < enters[j] })
	longest := map[string]int64{}
	for _, f := range faults {
		var pause int64
		for i := 1; i < len(enters); i++ {
			from, to := enters[i-1], enters[i]
			if to >= f.Start && from <= f.End && to-from > pause {
				pause = to - from
			}
		}
		if ms, seen := pause/1_000_000, longest[f.Kind]; ms >= seen {
			longest[f.Kind] = ms
		}
	}
	return longest
}
