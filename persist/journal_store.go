package persist

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Entry is one journaled message as stored: a row of stompgate_messages
// with a stream and seq. It is what the journal broadcasts (see
// Entry.Publishing) and what history and resume read back.
type Entry struct {
	Stream      string
	Seq         int64
	MessageID   string
	Sender      string
	ContentType string          // "" when NULL
	Headers     json.RawMessage // {"properties": {...}, "headers": {...}}, see RowFromDelivery
	Body        []byte
	PublishedAt time.Time
}

// Journal header names on every broadcast (SPEC §6).
const (
	HeaderSeq       = "x-seq"        // AMQP long (int64)
	HeaderMessageID = "x-message-id" // string
)

// maxKeyBytes caps sender and message_id of a journal row: together they
// form a btree key, whose entries Postgres limits to about 2.7 KB.
const maxKeyBytes = 1024

// checkJournalRow refuses, before they reach the database, rows whose key
// columns the database could not hold or index.
func checkJournalRow(r *Row) error {
	switch {
	case r.RoutingKey == "":
		return errors.New("journal message without a routing key (stream)")
	case len(r.MessageID) > maxKeyBytes, len(r.Sender) > maxKeyBytes:
		return fmt.Errorf("message id or sender longer than %d bytes", maxKeyBytes)
	}
	for _, s := range []string{r.RoutingKey, r.MessageID, r.Sender} {
		if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
			return errors.New("routing key, message id or sender is not valid UTF-8 text")
		}
	}
	return nil
}

// streamState is a stream's counters as read under its row lock.
type streamState struct {
	last      int64 // last_seq before this batch
	broadcast int64 // broadcast_seq
	next      int64 // last seq handed out so far in this batch
}

// journalResult is the outcome of one committed journal batch.
type journalResult struct {
	seqs     []int64 // per row: its new seq; 0 for a duplicate or rejected row
	rejected []Rejection
	streams  map[string]*streamState // every stream of the batch
	dups     int
}

// writeJournal commits rows (RoutingKey is the stream) in one transaction
// on conn: each new row gets the next seq of its stream, in batch order;
// rows whose (sender, message_id) is already stored are duplicates and get
// none; rows the database refuses for their content are listed in
// rejected and get none either (seqs stay gapless). Rows refused by
// checkJournalRow must not be passed. Any other error means nothing was
// committed (or, when the connection broke during COMMIT, that it is not
// known: the caller gives up the lead then).
//
// marks are broadcast marks to record on the way (stream → confirmed
// seq): those of the batch's streams, whose rows the transaction locks
// anyway, are written with last_seq; the caller may forget them once
// writeJournal succeeds. The others are left alone.
//
// Round trips: two, whatever the batch size — BEGIN, create and lock the
// streams and find duplicates in one pipeline; INSERT, advance the streams
// and COMMIT in a second. Only when a row is refused is the batch redone
// row by row with savepoints.
func writeJournal(ctx context.Context, conn *pgx.Conn, rows []Row, marks map[string]int64) (journalResult, error) {
	if len(rows) == 0 {
		return journalResult{streams: map[string]*streamState{}}, nil
	}
	res, err := writeJournalOnce(ctx, conn, rows, marks, false)
	if err != nil && IsContentError(err) {
		res, err = writeJournalOnce(ctx, conn, rows, marks, true)
	}
	return res, err
}

func writeJournalOnce(ctx context.Context, conn *pgx.Conn, rows []Row, marks map[string]int64, isolate bool) (journalResult, error) {
	res := journalResult{seqs: make([]int64, len(rows)), streams: map[string]*streamState{}}
	var streams, senders, ids []string
	for i := range rows {
		r := &rows[i]
		if _, ok := res.streams[r.RoutingKey]; !ok {
			res.streams[r.RoutingKey] = &streamState{}
			streams = append(streams, r.RoutingKey)
		}
		senders, ids = append(senders, r.Sender), append(ids, r.MessageID)
	}
	committed := false
	defer func() {
		if !committed && !conn.IsClosed() {
			// Ends the transaction whatever state it is in (a no-op
			// warning when none is open).
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dialTimeout)
			_, _ = conn.Exec(rctx, "ROLLBACK")
			cancel()
		}
	}()

	// First round trip: open the transaction, make sure every stream has
	// a row, lock them in stream order (stompgate_publish takes the same
	// locks), and find the rows already stored.
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`INSERT INTO stompgate_streams (stream) SELECT s FROM unnest($1::text[]) AS s ORDER BY s ON CONFLICT DO NOTHING`, streams)
	b.Queue(`SELECT stream, last_seq, broadcast_seq FROM stompgate_streams WHERE stream = ANY($1) ORDER BY stream FOR UPDATE`, streams)
	b.Queue(`SELECT m.sender, m.message_id FROM stompgate_messages m
		JOIN unnest($1::text[], $2::text[]) AS k(sender, message_id) ON m.sender = k.sender AND m.message_id = k.message_id`, senders, ids)
	br := conn.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		br.Close()
		return res, fmt.Errorf("begin: %w", err)
	}
	if _, err := br.Exec(); err != nil {
		br.Close()
		return res, fmt.Errorf("create streams: %w", err)
	}
	srows, err := br.Query()
	if err == nil {
		for srows.Next() {
			var s string
			var st streamState
			if err := srows.Scan(&s, &st.last, &st.broadcast); err != nil {
				break
			}
			st.next = st.last
			*res.streams[s] = st
		}
		srows.Close()
		err = srows.Err()
	}
	if err != nil {
		br.Close()
		return res, fmt.Errorf("lock streams: %w", err)
	}
	type key struct{ sender, id string }
	seen := map[key]bool{}
	drows, err := br.Query()
	if err == nil {
		for drows.Next() {
			var k key
			if err := drows.Scan(&k.sender, &k.id); err != nil {
				break
			}
			seen[k] = true
		}
		drows.Close()
		err = drows.Err()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, fmt.Errorf("find duplicates: %w", err)
	}

	var fresh []int // indexes of the rows to insert
	for i := range rows {
		k := key{rows[i].Sender, rows[i].MessageID}
		if seen[k] {
			res.dups++
			continue
		}
		seen[k] = true // a second copy within the batch is a duplicate too
		fresh = append(fresh, i)
	}
	b = &pgx.Batch{}
	if !isolate {
		for _, i := range fresh {
			st := res.streams[rows[i].RoutingKey]
			st.next++
			res.seqs[i] = st.next
		}
		if len(fresh) > 0 {
			b.Queue(insertJournalSQL, journalArrays(rows, fresh, res.seqs)...)
		}
	} else {
		// One savepoint per row: a refused row takes no seq.
		for _, i := range fresh {
			st := res.streams[rows[i].RoutingKey]
			if _, err := conn.Exec(ctx, `SAVEPOINT row`); err != nil {
				return res, fmt.Errorf("savepoint: %w", err)
			}
			res.seqs[i] = st.next + 1
			_, err := conn.Exec(ctx, insertJournalSQL, journalArrays(rows, []int{i}, res.seqs)...)
			if err != nil {
				res.seqs[i] = 0
				if !IsContentError(err) {
					return res, err
				}
				if _, rerr := conn.Exec(ctx, `ROLLBACK TO SAVEPOINT row`); rerr != nil {
					return res, fmt.Errorf("rollback to savepoint: %w", rerr)
				}
				res.rejected = append(res.rejected, Rejection{Index: i, Reason: err.Error()})
				continue
			}
			if _, err := conn.Exec(ctx, `RELEASE SAVEPOINT row`); err != nil {
				return res, fmt.Errorf("release savepoint: %w", err)
			}
			st.next++
		}
	}

	// Second round trip: the rows (above), the streams' new last_seq and
	// broadcast marks, COMMIT.
	var ss []string
	var lasts, bcasts []int64
	for s, st := range res.streams {
		if m := marks[s]; st.next != st.last || m > st.broadcast {
			ss, lasts, bcasts = append(ss, s), append(lasts, st.next), append(bcasts, m)
		}
	}
	if len(ss) > 0 {
		// claimed_seq: this leader broadcasts everything up to last_seq
		// right after COMMIT (process), so the poll need not look at the
		// stream until an application publishes on it again.
		b.Queue(`UPDATE stompgate_streams s SET last_seq = v.last, broadcast_seq = greatest(s.broadcast_seq, v.bcast),
				claimed_seq = greatest(s.claimed_seq, v.last)
			FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS v(stream, last, bcast) WHERE s.stream = v.stream`, ss, lasts, bcasts)
	}
	b.Queue(`COMMIT`)
	br = conn.SendBatch(ctx, b)
	for range b.Len() {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return res, fmt.Errorf("write journal: %w", err)
		}
	}
	if err := br.Close(); err != nil {
		return res, fmt.Errorf("commit: %w", err)
	}
	committed = true
	return res, nil
}

// insertJournalSQL inserts journal rows from arrays (see journalArrays):
// one statement for any number of rows, parameters in binary.
var insertJournalSQL = `INSERT INTO stompgate_messages (` + strings.Join(journalColumns, ", ") + `)
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
		$7::text[], $8::jsonb[], $9::bytea[], $10::timestamptz[])`

// journalArrays are the parameters of insertJournalSQL for rows[i], i in
// idx, with seq seqs[i]. A journal row is stored under the exchange it is
// broadcast to, so history by destination (/topic/<stream>) finds
// archived and journaled messages alike.
func journalArrays(rows []Row, idx []int, seqs []int64) []any {
	n := len(idx)
	var (
		ids, senders, exchanges, keys = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		seqOf                         = make([]int64, n)
		cts                           = make([]*string, n)
		headers, bodies               = make([]string, n), make([][]byte, n)
		published                     = make([]time.Time, n)
	)
	for k, i := range idx {
		r := &rows[i]
		ids[k], senders[k], exchanges[k], keys[k] = r.MessageID, r.Sender, BroadcastExchange, r.RoutingKey
		seqOf[k] = seqs[i]
		if r.ContentType != "" {
			ct := r.ContentType
			cts[k] = &ct
		}
		headers[k], bodies[k], published[k] = string(r.Headers), r.Body, r.PublishedAt
	}
	return []any{ids, senders, exchanges, keys, keys, seqOf, cts, headers, bodies, published}
}

var journalColumns = []string{"message_id", "sender", "exchange", "routing_key", "stream", "seq",
	"content_type", "headers", "body", "published_at"}

// pendingRange is a run of a stream's seqs to broadcast: after < seq <= upto.
type pendingRange struct {
	stream      string
	after, upto int64
}

// pendingEntries reads, in one query, what is committed but not yet
// broadcast on streams (every stream when nil): the rows with
// max(broadcast_seq, published[stream]) < seq <= last_seq, at most limit
// per stream, ordered by stream and seq. published is what this leader
// has already published (confirmed or not) where broadcast_seq may not
// show it yet; streams missing from it count as published up to their
// broadcast_seq.
//
// With dirty, only the streams whose last_seq is above claimed_seq are
// read (the partial index stompgate_streams_pending): those where an
// application has committed rows since the leader last took charge of
// the stream. That is the poll: its cost is what applications publish,
// not the number of streams nor the journal's own traffic.
func pendingEntries(ctx context.Context, conn *pgx.Conn, streams []string, published map[string]int64, limit int, dirty bool) ([]Entry, error) {
	var ps []string
	var pseqs []int64
	add := func(s string) {
		if q, ok := published[s]; ok {
			ps, pseqs = append(ps, s), append(pseqs, q)
		}
	}
	if streams == nil {
		for s := range published {
			add(s)
		}
	} else {
		for _, s := range streams {
			add(s)
		}
	}
	q := `SELECT ` + entryColumns + ` FROM stompgate_streams s
		LEFT JOIN unnest($1::text[], $2::bigint[]) AS p(stream, seq) ON p.stream = s.stream
		CROSS JOIN LATERAL (SELECT * FROM stompgate_messages m
			WHERE m.stream = s.stream AND m.seq > greatest(s.broadcast_seq, coalesce(p.seq, 0)) AND m.seq <= s.last_seq
			ORDER BY m.seq LIMIT $3) m
		WHERE s.last_seq > greatest(s.broadcast_seq, coalesce(p.seq, 0))`
	if dirty {
		q += ` AND s.last_seq > s.claimed_seq`
	}
	args := []any{ps, pseqs, limit}
	if streams != nil {
		q += ` AND s.stream = ANY($4)`
		args = append(args, streams)
	}
	rows, err := conn.Query(ctx, q+` ORDER BY m.stream, m.seq`, args...)
	if err != nil {
		return nil, fmt.Errorf("read pending journal: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanEntry)
	if err != nil {
		return nil, fmt.Errorf("read pending journal: %w", err)
	}
	return out, nil
}

// entryColumns are the columns ReadEntries and fetchRanges scan, in order.
const entryColumns = `m.stream, m.seq, m.message_id, m.sender, coalesce(m.content_type, ''), m.headers, m.body, m.published_at`

// ScanEntry scans entryColumns.
func scanEntry(r pgx.CollectableRow) (Entry, error) {
	var e Entry
	err := r.Scan(&e.Stream, &e.Seq, &e.MessageID, &e.Sender, &e.ContentType, &e.Headers, &e.Body, &e.PublishedAt)
	return e, err
}

// fetchRanges reads the rows of ranges, at most limit per range, ordered
// by stream and seq.
func fetchRanges(ctx context.Context, conn *pgx.Conn, ranges []pendingRange, limit int) ([]Entry, error) {
	if len(ranges) == 0 {
		return nil, nil
	}
	ss, afters, uptos := make([]string, len(ranges)), make([]int64, len(ranges)), make([]int64, len(ranges))
	for i, r := range ranges {
		ss[i], afters[i], uptos[i] = r.stream, r.after, r.upto
	}
	rows, err := conn.Query(ctx, `SELECT `+entryColumns+`
		FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(stream, after, upto)
		CROSS JOIN LATERAL (SELECT * FROM stompgate_messages m
			WHERE m.stream = r.stream AND m.seq > r.after AND m.seq <= r.upto
			ORDER BY m.seq LIMIT $4) m
		ORDER BY m.stream, m.seq`, ss, afters, uptos, limit)
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanEntry)
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	return out, nil
}

// markBroadcast records that every seq up to marks[stream] was broadcast
// and deletes from marks the streams it recorded. Streams whose row an
// application transaction holds locked (an open stompgate_publish) are
// skipped, not waited for, and stay in marks for the next call.
func markBroadcast(ctx context.Context, conn *pgx.Conn, marks map[string]int64) error {
	if len(marks) == 0 {
		return nil
	}
	ss, seqs := make([]string, 0, len(marks)), make([]int64, 0, len(marks))
	for s, q := range marks {
		ss, seqs = append(ss, s), append(seqs, q)
	}
	rows, err := conn.Query(ctx, `WITH v AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS v(stream, seq)),
		l AS (SELECT s.stream FROM stompgate_streams s JOIN v ON s.stream = v.stream
			ORDER BY s.stream FOR UPDATE OF s SKIP LOCKED)
		UPDATE stompgate_streams s SET broadcast_seq = greatest(s.broadcast_seq, v.seq), claimed_seq = greatest(s.claimed_seq, v.seq)
		FROM v JOIN l ON l.stream = v.stream WHERE s.stream = v.stream RETURNING s.stream`, ss, seqs)
	if err != nil {
		return fmt.Errorf("mark broadcast: %w", err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("mark broadcast: %w", err)
	}
	for _, s := range done {
		delete(marks, s)
	}
	return nil
}
