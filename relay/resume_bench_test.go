package relay

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/internal/testenv"
)

// TestResumeReplayTiming measures the journal target "resume of 1,000
// messages: ≤ 100 ms until the first live message": SUBSCRIBE with
// x-resume-after:0 on a stream of 1,000 journaled messages, then one live
// SEND; the time from the SUBSCRIBE to that live MESSAGE. A measurement,
// not a timed assertion: it runs only with STOMPGATE_BENCH=1 (make bench)
// and reports; it fails only on wrong content.
//
//	STOMPGATE_BENCH=1 go test -run TestResumeReplayTiming -v ./relay
func TestResumeReplayTiming(t *testing.T) {
	if os.Getenv("STOMPGATE_BENCH") == "" {
		t.Skip("a measurement: set STOMPGATE_BENCH=1 (make bench)")
	}
	e := journalEdge(t, map[string]string{"EDGE_RESUME_MAX": "1000"})
	pub := e.mustDial(nil)
	pub.connect(testenv.Token(t, "publisher", nil))
	var b strings.Builder
	for i := 1; i <= 1000; i++ {
		fmt.Fprintf(&b, "SEND\ndestination:/app/bench.resume\n\n%d\x00", i)
	}
	pub.raw(b.String())
	testenv.WaitFor(t, 60*time.Second, func() error {
		probe := e.mustDial(nil)
		probe.connect(testenv.Token(t, "probe", nil))
		probe.raw("SUBSCRIBE\nid:p\ndestination:/topic/bench.resume\nx-resume-after:1000\nreceipt:r\n\n\x00")
		if r := probe.expect(frame.RECEIPT); r.Header.Get(HeaderSeq) != "1000" {
			return fmt.Errorf("journaled up to %s", r.Header.Get(HeaderSeq))
		}
		return nil
	})
	var took []time.Duration
	for round := 0; round < 10; round++ {
		c := e.mustDial(nil)
		c.connect(testenv.Token(t, "reader", nil))
		start := time.Now()
		// The stream holds 1000+round messages: replay exactly the last 1000.
		c.raw(fmt.Sprintf("SUBSCRIBE\nid:r\ndestination:/topic/bench.resume\nx-resume-after:%d\n\n\x00", round))
		pub.raw("SEND\ndestination:/app/bench.resume\n\nlive\x00")
		want := int64(1001 + round)
		for seq := int64(round + 1); ; {
			f := c.next(30 * time.Second).f
			got := seqOf(t, f)
			if got != seq {
				t.Fatalf("seq %d, want %d", got, seq)
			}
			if got == want {
				took = append(took, time.Since(start))
				break
			}
			seq++
		}
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	t.Logf("resume of 1000+ messages, SUBSCRIBE → first live MESSAGE over 10 rounds: min %s, median %s, max %s",
		took[0].Round(time.Millisecond), took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
}
