package relay

import (
	"bufio"
	"net"
	"net/http"
)

// hijackWrapper lets the session put a write buffer under gorilla's
// connection: gorilla writes every message straight to the net.Conn it
// hijacked, one syscall each, and the writer goroutine wants one per batch.
type hijackWrapper struct {
	http.ResponseWriter
	wrap func(net.Conn) net.Conn
}

func (h hijackWrapper) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	return h.wrap(c), rw, nil
}
