package main

import (
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// The sequential specification a lock's history must be linearizable to: a lock (mutex,
// semaphore or read-write) granting fencing tokens that grow with each grant, guarding a
// resource that takes a fenced write only from a current exclusive holder whose token is at
// least the highest it has taken, and refuses every write with a lower token.

type input struct {
	op        string // acquire, release, write, read
	holder    string
	exclusive bool
	token     int64
	lock      lockInfo
}

type holderState struct {
	holder    string
	exclusive bool
}

type lockState struct {
	holders   []holderState // sorted by holder
	lastGrant int64
	maxWrite  int64
}

func (s lockState) holding(holder string) (holderState, bool) {
	for _, h := range s.holders {
		if h.holder == holder {
			return h, true
		}
	}
	return holderState{}, false
}

func (s lockState) admits(exclusive bool, lock lockInfo) bool {
	switch lock.kind {
	case "Semaphore":
		return len(s.holders) < lock.permits
	case "ReadWrite":
		if exclusive {
			return len(s.holders) == 0
		}
		for _, h := range s.holders {
			if h.exclusive {
				return false
			}
		}
		return true
	default:
		return len(s.holders) == 0
	}
}

func step(state, in, out interface{}) (bool, interface{}) {
	s := state.(lockState)
	i := in.(input)
	switch i.op {
	case "acquire":
		token := out.(int64)
		if _, held := s.holding(i.holder); held || !s.admits(i.exclusive, i.lock) || token <= s.lastGrant {
			return false, s
		}
		next := lockState{lastGrant: token, maxWrite: s.maxWrite}
		next.holders = append(append([]holderState{}, s.holders...), holderState{i.holder, i.exclusive})
		sort.Slice(next.holders, func(a, b int) bool { return next.holders[a].holder < next.holders[b].holder })
		return true, next
	case "release":
		if _, held := s.holding(i.holder); !held {
			return false, s
		}
		next := lockState{lastGrant: s.lastGrant, maxWrite: s.maxWrite}
		for _, h := range s.holders {
			if h.holder != i.holder {
				next.holders = append(next.holders, h)
			}
		}
		return true, next
	case "write":
		if !out.(bool) {
			return i.token < s.maxWrite, s
		}
		h, held := s.holding(i.holder)
		if !held || !h.exclusive || i.token < s.maxWrite {
			return false, s
		}
		next := s
		next.maxWrite = i.token
		return true, next
	case "read":
		_, held := s.holding(i.holder)
		return held, s
	}
	return false, s
}

func equal(a, b interface{}) bool {
	x, y := a.(lockState), b.(lockState)
	if x.lastGrant != y.lastGrant || x.maxWrite != y.maxWrite || len(x.holders) != len(y.holders) {
		return false
	}
	for i := range x.holders {
		if x.holders[i] != y.holders[i] {
			return false
		}
	}
	return true
}

var lockModel = porcupine.Model{
	Init:  func() interface{} { return lockState{lastGrant: -1 << 62, maxWrite: -1 << 62} },
	Step:  step,
	Equal: equal,
	DescribeOperation: func(in, out interface{}) string {
		i := in.(input)
		return fmt.Sprintf("%s %s token %d -> %v", i.op, i.holder, i.token, out)
	},
}

// operations turns one lock's holds into Porcupine operations: each holder's acquire (from
// its request to its enter, answered with its token), its requests to the resource, and its
// release (from its leave, or from its enter when the hold ended abnormally, to the later of
// its leave and the release the test saw).
func operations(holds []*hold, lock lockInfo) []porcupine.Operation {
	var ops []porcupine.Operation
	for client, h := range holds {
		ops = append(ops, porcupine.Operation{
			ClientId: client, Input: input{op: "acquire", holder: h.holder, exclusive: h.exclusive, lock: lock},
			Call: h.requested, Output: h.token, Return: h.enter,
		})
		for _, r := range h.requests {
			ops = append(ops, porcupine.Operation{
				ClientId: client, Input: input{op: r.Ev, holder: h.holder, token: r.Token, lock: lock},
				Call: r.Call, Output: r.Accepted, Return: r.Ret,
			})
		}
		if !h.left && h.released == 0 {
			continue // still held when the history ends
		}
		call := h.leave
		if h.abnormal || !h.left {
			call = h.enter
		}
		ret := max(h.leave, h.released)
		ops = append(ops, porcupine.Operation{
			ClientId: client, Input: input{op: "release", holder: h.holder, lock: lock},
			Call: call, Output: nil, Return: max(ret, call),
		})
	}
	return ops
}

// linearizable checks each lock's history on its own: Ok, Illegal, or Unknown if the search
// did not finish within the timeout. For a lock that is not, Porcupine's visualization of
// the longest linearizable prefix goes to `<visualize>-<lock>.html`.
func linearizable(byLock map[string][]*hold, locks map[string]lockInfo, timeout time.Duration, visualize string) porcupine.CheckResult {
	result := porcupine.Ok
	for name, holds := range byLock {
		verdict, info := porcupine.CheckOperationsVerbose(lockModel, operations(holds, locks[name]), timeout)
		switch verdict {
		case porcupine.Illegal:
			path := fmt.Sprintf("%s-%s.html", visualize, name)
			fmt.Fprintf(os.Stderr, "historycheck: the history of lock %s is not linearizable; see %s\n", name, path)
			if err := porcupine.VisualizePath(lockModel, info, path); err != nil {
				fmt.Fprintln(os.Stderr, "historycheck:", err)
			}
			result = porcupine.Illegal
		case porcupine.Unknown:
			if result == porcupine.Ok {
				result = porcupine.Unknown
			}
		}
	}
	return result
}
