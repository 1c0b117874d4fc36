package relay

import (
	"log/slog"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/stomp"
)

// frameTrace is the opt-in frame log (EDGE_LOG_FRAMES): every frame's
// command and headers with tokens redacted, bodies cut to 256 bytes.
type frameTrace struct{ enabled bool }

func (t frameTrace) log(log *slog.Logger, dir string, f *frame.Frame) {
	if !t.enabled {
		return
	}
	hdr := make(map[string]string, f.Header.Len())
	for i := 0; i < f.Header.Len(); i++ {
		k, v := f.Header.GetAt(i)
		switch k {
		case frame.Passcode, "Authorization", "authorization", "access_token", "token":
			v = "[redacted]"
		}
		hdr[k] = v
	}
	body := f.Body
	if len(body) > 256 {
		body = body[:256]
	}
	if f.Header.Get(frame.Destination) == auth.EdgeRefresh {
		body = []byte("[redacted]")
	}
	log.Info("frame", "dir", dir, "command", f.Command, "headers", hdr, "body", string(body), "body_bytes", len(f.Body))
}

// logEncoded traces a frame the broker side handed over already encoded.
func (t frameTrace) logEncoded(log *slog.Logger, data []byte, v stomp.Version) {
	p := stomp.NewParser(stomp.Limits{MaxFrameBytes: len(data) + 1, MaxHeaders: 1 << 16, MaxHeaderBytes: len(data) + 1}, stomp.ServerCommands)
	p.Version = v
	p.Feed(data)
	for f, err := range p.Frames() {
		if err != nil {
			return
		}
		t.log(log, "out", f)
	}
}
