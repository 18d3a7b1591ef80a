// historycheck judges the history a lockkeeper chaos run recorded: it checks that each
// lock's history is linearizable against a sequential model of a lock guarding a fenced
// resource (with Porcupine), and counts the invariants directly: overlapping exclusive
// holds (inside the fence window that follows an abnormal end, or after it and caught by
// the fencing token, or not), more holders than a lock allows, more Granted claims than a
// lock admits as the API server showed them, fencing tokens that went back, claims granted
// again after their release, stuck claims, and undocumented exit codes of `lockkeeper run`.
// It prints one JSON summary line.
//
// Usage: historycheck HISTORY.jsonl
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// record is one line of the history; which fields are set depends on ev.
type record struct {
	Ev       string `json:"ev"`
	Holder   string `json:"holder"`
	Lock     string `json:"lock"`
	Type     string `json:"type"`            // lock: Mutex, Semaphore, ReadWrite
	Permits  int    `json:"permits"`         // lock
	Delay    int64  `json:"lockDelayMs"`     // lock: its lock-delay, ms
	Lease    int64  `json:"leaseMs"`         // request: the holder's lease, ms, if it has one
	Mode     string `json:"mode"`            // request, phase: Exclusive, Shared
	Token    int64  `json:"token"`           // enter, write, read, phase
	At       int64  `json:"at"`              // request, enter, leave, released, phase, stuck, exit
	Call     int64  `json:"call"`            // write, read
	Ret      int64  `json:"ret"`             // write, read
	Accepted bool   `json:"accepted"`        // write, read
	Abnormal bool   `json:"abnormal"`        // released: the hold ended without the holder leaving first
	Phase    string `json:"phase"`           // phase (Deleted when the claim is gone), stuck
	Version  string `json:"resourceVersion"` // phase: the claim's metadata.resourceVersion
	Code     int    `json:"code"`            // exit
	Kind     string `json:"kind"`            // fault
	Start    int64  `json:"start"`           // fault
	End      int64  `json:"end"`             // fault
}

// hold is everything recorded about one holder (one claim).
type hold struct {
	holder    string
	lock      string
	exclusive bool
	lease     int64 // ns; 0 for a holder without a lease (a pod, a Job)
	requested int64
	entered   bool
	enter     int64
	token     int64
	left      bool
	leave     int64
	released  int64
	abnormal  bool
	// When the hold is known to have ended abnormally (0: it did not, as far as the history
	// shows): the earliest of its abnormal release and its claim shown Lost, Revoked or Expired.
	abnormalAt int64
	// For a hold with neither leave nor release: the end of the run, until which it counts
	// as held.
	openUntil int64
	requests  []record
}

type lockInfo struct {
	kind      string
	permits   int
	lockDelay int64 // ns
}

type summary struct {
	Grants              int              `json:"grants"`
	Faults              map[string]int   `json:"faults"`
	OpenHolds           int              `json:"open_holds"`
	FenceWindowOverlaps int              `json:"fence_window_overlaps"`
	OverlapsCaught      int              `json:"overlaps_caught_by_token"`
	UnsafeOverlaps      int              `json:"unsafe_overlaps"`
	TokenRegressions    int              `json:"token_regressions"`
	PermitViolations    int              `json:"permit_violations"`
	APIHolderViolations int              `json:"api_holder_count_violations"`
	GrantedTwice        int              `json:"granted_twice"`
	StuckClaims         int              `json:"stuck_claims"`
	UndocumentedExits   int              `json:"undocumented_exits"`
	Linearizable        string           `json:"linearizable"`
	LongestPauseMs      map[string]int64 `json:"longest_grant_pause_ms"`
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
			locks[r.Lock] = lockInfo{kind: r.Type, permits: r.Permits, lockDelay: r.Delay * int64(time.Millisecond)}
		case "request":
			h := get(r)
			h.requested = r.At
			h.exclusive = r.Mode == "Exclusive"
			h.lease = r.Lease * int64(time.Millisecond)
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
	s.APIHolderViolations = apiHolderViolations(allPhases, locks)
	s.OpenHolds = keepOpen(holds, endOfRun(records))
	byLock := map[string][]*hold{}
	for _, h := range holds {
		if h.entered {
			s.Grants++
			h.abnormalAt = abnormalEnd(h, phases)
			byLock[h.lock] = append(byLock[h.lock], h)
		}
	}
	for name, lockHolds := range byLock {
		sort.Slice(lockHolds, func(i, j int) bool { return lockHolds[i].enter < lockHolds[j].enter })
		found := overlaps(lockHolds, locks[name])
		s.FenceWindowOverlaps += found.inFenceWindow
		s.OverlapsCaught += found.caught
		s.UnsafeOverlaps += found.unsafe
		s.PermitViolations += permitViolations(lockHolds, locks[name])
	}
	s.Linearizable = string(linearizable(byLock, locks, timeout, visualize))
	for kind, pause := range longestPauses(holds, faults) {
		s.LongestPauseMs[kind] = pause
	}
	return s
}

// end is when a hold ended for the checks: the holder's leave, or its release if it never
// left (killed), or the end of the run if neither was recorded (see keepOpen).
func (h *hold) end() int64 {
	switch {
	case h.left:
		return h.leave
	case h.released != 0:
		return h.released
	default:
		return h.openUntil
	}
}

// endOfRun is the latest time any record carries: a hold still open then was held to the end.
// The history's lines are appended by many processes, so the last line need not be the latest.
func endOfRun(records []record) int64 {
	var last int64
	for _, r := range records {
		last = max(last, r.At, r.Ret, r.End)
	}
	return last
}

// keepOpen makes every hold that entered and was neither left nor released count as held until
// the end of the run, and answers how many there were. Dropping them (as if they never held)
// would hide the overlaps and the permits of a holder whose end went unrecorded: one that was
// killed, or still ran.
func keepOpen(holds map[string]*hold, endOfRun int64) int {
	open := 0
	for _, h := range holds {
		if h.entered && !h.left && h.released == 0 {
			h.openUntil = endOfRun
			open++
		}
	}
	return open
}

// abnormalEnd dates a hold's abnormal end, or answers 0 when it ended normally. The test's
// `released` record (abnormal: the grant ended under the holder: a lease that lapsed, a loss,
// a revoke, an expiry) is written once the test saw the hold over, so it is a latest date;
// the claim's phase, where the claim is the holder's (a Job's claim has its name, a gated
// pod's is `<holder>-<lock>`; `lockkeeper run` names its claim itself), may date it earlier:
// the first Lost, Revoked or Expired after it showed the hold's grant.
func abnormalEnd(h *hold, phases map[string][]record) int64 {
	var at int64
	if h.abnormal {
		at = h.released
	}
	for _, claim := range []string{h.holder, h.holder + "-" + h.lock} {
		seen := phases[claim]
		sort.SliceStable(seen, func(i, j int) bool { return seen[i].At < seen[j].At })
		granted := false
		for _, p := range seen {
			if p.Phase == "Granted" && p.Token == h.token {
				granted = true
			} else if granted && (p.Phase == "Lost" || p.Phase == "Revoked" || p.Phase == "Expired") {
				if at == 0 || p.At < at {
					at = p.At
				}
				break
			}
		}
	}
	return at
}

// conflicts tells whether two holds of `lock` exclude each other: on a Mutex always, on a
// ReadWrite lock when either is a writer, on a Semaphore never (its permits are counted).
func conflicts(lock lockInfo, a, b *hold) bool {
	switch lock.kind {
	case "Semaphore":
		return false
	case "ReadWrite":
		return a.exclusive || b.exclusive
	default:
		return true
	}
}

type overlapCounts struct {
	inFenceWindow int // the newer entered before the older's abnormal end could be fenced
	caught        int // after it, and no request of the lower token's holder taken since
	unsafe        int // after it, and a request of the lower token's holder taken since
}

// overlaps counts the pairs of holds of one lock (sorted by enter) that exclude each other
// and overlapped in time. An overlap inside the fence window of the older hold is a
// violation by itself, whatever either holder did in it: the lock granted again before the
// old holder could have stopped. Past that window, the lock did what it could (the old
// holder overran its lease and the lock-delay), and the fencing token must do the rest: the
// overlap was caught when every request the holder of the lower token made after the other
// entered was refused by the resource, unsafe when one was accepted (a read is never
// refused: a token cannot fence a reader).
func overlaps(holds []*hold, lock lockInfo) overlapCounts {
	var found overlapCounts
	for i, older := range holds {
		for _, newer := range holds[i+1:] {
			if newer.enter >= older.end() || !conflicts(lock, older, newer) {
				continue
			}
			switch {
			case insideFenceWindow(older, newer, lock):
				found.inFenceWindow++
			case staleRequestTaken(older, newer):
				found.unsafe++
			default:
				found.caught++
			}
		}
	}
	return found
}

// insideFenceWindow tells whether `newer` entered before `older`, which ended abnormally, can
// have been fenced: within the old hold's lease (a holder that lost its grant stops within
// its lease; a paused one cannot even tell) plus the lock's lock-delay (for which the lock is
// held back after an abnormal end, so that such a holder stops before anyone else holds)
// after the abnormal end.
func insideFenceWindow(older, newer *hold, lock lockInfo) bool {
	return older.abnormalAt != 0 && newer.enter < older.abnormalAt+older.lease+lock.lockDelay
}

// staleRequestTaken tells whether, of two overlapping holds, the holder of the lower token
// had a request accepted once the other had entered.
func staleRequestTaken(x, y *hold) bool {
	a, b := x, y
	if a.token > b.token {
		a, b = b, a
	}
	for _, r := range a.requests {
		if r.Call >= b.enter && r.Accepted {
			return true
		}
	}
	return false
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

// apiHolderViolations replays the claims' phases in the order the API server made them and
// counts the grants it showed while the lock already showed as many Granted claims as it
// admits (a Mutex 1, a Semaphore its permits, a ReadWrite lock one Exclusive claim or any
// number of Shared ones, never both). Holders act on what the API shows (a gate lets its pod
// run, a Job is resumed), so the API must never show more holders than the lock has.
func apiHolderViolations(phases []record, locks map[string]lockInfo) int {
	type grant struct {
		lock  string
		alone bool
	}
	granted := map[string]grant{} // by claim
	alone, together := map[string]int{}, map[string]int{}
	violations := 0
	for _, p := range inAPIOrder(phases) {
		was, wasGranted := granted[p.Holder]
		if p.Phase != "Granted" {
			if wasGranted {
				// Counted off where it was counted on.
				if was.alone {
					alone[was.lock]--
				} else {
					together[was.lock]--
				}
				delete(granted, p.Holder)
			}
			continue
		}
		if wasGranted {
			continue // the same grant shown again (its token written)
		}
		lock := locks[p.Lock]
		now := grant{p.Lock, holdsAlone(lock, p.Mode)}
		granted[p.Holder] = now
		if now.alone {
			alone[p.Lock]++
		} else {
			together[p.Lock]++
		}
		if overAdmitted(lock, alone[p.Lock], together[p.Lock]) {
			violations++
		}
	}
	return violations
}

// inAPIOrder sorts phase records in the order the API server made the changes: by the
// claim's resourceVersion. The API calls resourceVersions opaque, but one etcd's revisions
// for one resource type grow with each write and compare as integers in practice; the times
// the watcher recorded them can be out of that order (a relist after a dropped watch, a
// lagging watch). A history without resourceVersions (older runs) is replayed by time.
func inAPIOrder(phases []record) []record {
	ordered := append([]record(nil), phases...)
	sort.SliceStable(ordered, func(i, j int) bool { return ordered[i].At < ordered[j].At })
	versions := make([]uint64, len(ordered))
	for i, p := range ordered {
		v, err := strconv.ParseUint(p.Version, 10, 64)
		if err != nil {
			return ordered
		}
		versions[i] = v
	}
	// Records of one version keep their time order: a deletion the recorder inferred after a
	// relist carries the last version it saw of the claim.
	sort.Stable(byVersion{ordered, versions})
	return ordered
}

// byVersion sorts phase records by their parsed resourceVersions, kept beside them.
type byVersion struct {
	records  []record
	versions []uint64
}

func (b byVersion) Len() int           { return len(b.records) }
func (b byVersion) Less(i, j int) bool { return b.versions[i] < b.versions[j] }
func (b byVersion) Swap(i, j int) {
	b.records[i], b.records[j] = b.records[j], b.records[i]
	b.versions[i], b.versions[j] = b.versions[j], b.versions[i]
}

// overAdmitted tells whether a lock shows more Granted claims than it admits, counted as
// those that hold it alone (see holdsAlone) and those that share it.
func overAdmitted(lock lockInfo, alone, together int) bool {
	if lock.kind == "Semaphore" {
		return together > lock.permits
	}
	return alone > 1 || (alone == 1 && together > 0)
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
