package relay

import (
	"bytes"
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/history"
	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/stomp"
)

// Journal reads journaled streams (SPEC §6) for x-resume-after
// (history.Journal in production).
type Journal interface {
	// Replay returns the messages of stream with seq > after, in seq
	// order, at most limit, and the stream's last committed seq; each as
	// a live MESSAGE from the broker would carry it.
	Replay(ctx context.Context, stream string, after int64, limit int) ([]history.StompMessage, int64, error)
}

// HeaderResumeAfter, on a SUBSCRIBE to /topic/<key>, asks for the stream's
// messages after a seq first (SPEC §6); HeaderResume:gap marks the first
// MESSAGE when they cannot all be replayed.
const (
	HeaderResumeAfter = "x-resume-after"
	HeaderResume      = "x-resume"
	HeaderSeq         = "x-seq"
)

// resume is one subscription's switch from replay to live. The session's
// reader runs the replay; the broker side's deliveries for the
// subscription pass through filter meanwhile (any goroutine, under mu).
type resume struct {
	sub     string
	receipt string // the internal receipt of the broker SUBSCRIBE
	ready   chan struct{}

	mu        sync.Mutex
	buffering bool     // replay running: live messages are held
	held      [][]byte // encoded live MESSAGEs held during the replay
	heldBytes int
	lastSent  int64 // live messages with seq <= lastSent are duplicates of the replay
	gap       bool  // the next MESSAGE that passes carries x-resume:gap
}

// resumes is the session's set of subscriptions switching to live, read
// by the broker side on every delivery while non-empty.
type resumes struct {
	n  atomic.Int32
	mu sync.Mutex
	m  map[string]*resume
}

func (r *resumes) add(rs *resume) {
	r.mu.Lock()
	if r.m == nil {
		r.m = map[string]*resume{}
	}
	r.m[rs.sub] = rs
	r.n.Store(int32(len(r.m)))
	r.mu.Unlock()
}

func (r *resumes) remove(rs *resume) {
	r.mu.Lock()
	if r.m[rs.sub] == rs {
		delete(r.m, rs.sub)
	}
	r.n.Store(int32(len(r.m)))
	r.mu.Unlock()
}

func (r *resumes) get(sub string) *resume {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[sub]
}

// byReceipt finds the resume waiting for an internal receipt.
func (r *resumes) byReceipt(id string) *resume {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range r.m {
		if rs.receipt == id {
			return rs
		}
	}
	return nil
}

// deliveryInfo reads the subscription and x-seq of an encoded MESSAGE.
func deliveryInfo(data []byte, v stomp.Version) (sub string, seq int64, ok bool) {
	p := stomp.NewParser(stomp.Limits{MaxFrameBytes: len(data) + 1, MaxHeaders: 1 << 16, MaxHeaderBytes: len(data) + 1}, stomp.ServerCommands)
	p.Version = v
	p.Feed(data)
	f, err := p.Next()
	if err != nil || f == nil {
		return "", 0, false
	}
	seq, err = strconv.ParseInt(f.Header.Get(HeaderSeq), 10, 64)
	if err != nil {
		seq = -1
	}
	return f.Header.Get(frame.Subscription), seq, true
}

// withResumeGap inserts x-resume:gap after the command line of an encoded
// frame.
func withResumeGap(data []byte) []byte {
	nl := bytes.IndexByte(data, '\n')
	out := make([]byte, 0, len(data)+16)
	out = append(out, data[:nl+1]...)
	out = append(out, HeaderResume+":gap\n"...)
	return append(out, data[nl+1:]...)
}

// filter decides what happens to a live delivery for a resuming
// subscription: held during the replay (overflow: more than limit bytes
// held), dropped as a duplicate of the replay, or passed (with
// x-resume:gap when it is the first after a gap). done: no duplicate can
// follow, the subscription is live.
func (rs *resume) filter(data []byte, seq int64, limit int) (out []byte, overflow, done bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.buffering {
		rs.held = append(rs.held, data)
		rs.heldBytes += len(data)
		return nil, rs.heldBytes > limit, false
	}
	out, done = rs.pass(data, seq)
	return out, false, done
}

// pass is filter after the replay; out is nil for a duplicate. The caller
// holds mu. The stream is broadcast in seq order, so once a newer message
// passed no duplicate of the replay can follow.
func (rs *resume) pass(data []byte, seq int64) (out []byte, done bool) {
	if seq >= 0 && seq <= rs.lastSent {
		return nil, false
	}
	if rs.gap {
		rs.gap = false
		data = withResumeGap(data)
	}
	return data, seq > rs.lastSent
}

// startResume validates an x-resume-after SUBSCRIBE and prepares the
// switch; the broker SUBSCRIBE then carries the internal receipt.
func (s *Session) startResume(f *frame.Frame, id string, mode broker.AckMode) (*resume, *Refusal) {
	raw := f.Header.Get(HeaderResumeAfter)
	f.Header.Del(HeaderResumeAfter)
	after, err := strconv.ParseInt(raw, 10, 64)
	switch {
	case err != nil || after < 0:
		return nil, refusal(ReasonBadFrame, "x-resume-after must be a seq (a whole number >= 0), not %q", raw)
	case s.env.journal == nil:
		return nil, refusal(ReasonBadFrame, "x-resume-after needs the journal: this edge runs without EDGE_DATABASE_URL")
	case mode != broker.AckAuto:
		return nil, refusal(ReasonBadFrame, "x-resume-after works with ack:auto only")
	}
	rs := &resume{sub: id, receipt: "stompgate-resume-" + id, ready: make(chan struct{}), buffering: true, lastSent: after}
	s.resumes.add(rs)
	return rs, nil
}

// finishResume waits until the broker subscription is live, replays the
// stream after rs.lastSent, answers the client's receipt with x-seq, and
// releases what was held. It runs on the reader goroutine.
func (s *Session) finishResume(rs *resume, d string, stream, clientReceipt string) error {
	s.flushBroker()
	t := time.NewTimer(s.env.cfg.BrokerTimeout)
	defer t.Stop()
	select {
	case <-rs.ready:
	case <-t.C:
		s.brokerLost(broker.ErrUnavailable)
		return errClosing
	case <-s.ctx.Done():
		return errClosing
	}
	after, max := rs.lastSent, s.env.cfg.ResumeMax
	ctx, cancel := context.WithTimeout(s.ctx, s.env.cfg.BrokerTimeout)
	msgs, last, err := s.env.journal.Replay(ctx, stream, after, max+1)
	cancel()
	gap := err != nil || len(msgs) > max || (len(msgs) > 0 && msgs[0].Seq != after+1) || (len(msgs) == 0 && last > after)
	if err != nil {
		s.log.Warn("resume: journal unreadable; the client fills from /api/history", "stream", stream, "err", err)
	}
	if clientReceipt != "" {
		if err := s.send(frame.New(frame.RECEIPT, frame.ReceiptId, clientReceipt, HeaderSeq, strconv.FormatInt(last, 10))); err != nil {
			return err
		}
	}
	v := s.ver()
	lastSent := after
	if !gap {
		for _, m := range msgs {
			mf := frame.New(frame.MESSAGE, frame.Subscription, rs.sub, frame.Destination, d,
				frame.MessageId, "stompgate-replay-"+strconv.FormatInt(m.Seq, 10), "redelivered", "false")
			for _, kv := range m.Header {
				mf.Header.Add(kv[0], kv[1])
			}
			mf.Header.Add(frame.ContentLength, strconv.Itoa(len(m.Body)))
			mf.Body = m.Body
			if err := s.out.Enqueue(broker.NewFrame(stomp.AppendMessage(nil, mf, v), frame.MESSAGE, time.Time{})); err != nil {
				return err
			}
			lastSent = m.Seq
		}
		s.env.metrics.ResumeReplayed.Add(float64(len(msgs)))
	} else {
		s.env.metrics.ResumeGaps.Inc()
	}
	rs.mu.Lock()
	rs.buffering, rs.lastSent, rs.gap = false, lastSent, gap
	held := rs.held
	rs.held, rs.heldBytes = nil, 0
	done := false
	for _, data := range held {
		_, seq, _ := deliveryInfo(data, v)
		out, fin := rs.pass(data, seq)
		if out != nil {
			if err := s.out.Enqueue(broker.NewFrame(out, frame.MESSAGE, time.Time{})); err != nil {
				rs.mu.Unlock()
				return err
			}
		}
		done = done || fin
	}
	rs.mu.Unlock()
	if done {
		s.resumes.remove(rs)
	}
	s.out.Flush()
	return nil
}
