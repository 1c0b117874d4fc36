package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Mode is how publishers pace themselves.
type Mode string

const (
	ModeClosed Mode = "closed" // at most Inflight unreceived messages per pair
	ModeRate   Mode = "rate"   // Rate messages/s in total, open loop
	ModeIdle   Mode = "idle"   // Conns subscribed sessions that send nothing, held for Duration; memory per session
	ModeChat   Mode = "chat"   // Users in rooms sending with think times: ramp, sustained and spike phases
	ModeStorm  Mode = "storm"  // Conns sessions that all reconnect at once when dropped (--at) or closed by the server
)

// options is one load test, from flags (and STOMPLOAD_TOKEN_SECRET).
type options struct {
	URL         string        // --url, a ws:// or wss:// URL; default ws://127.0.0.1:8080/ws
	TokenSecret string        // --token-secret or STOMPLOAD_TOKEN_SECRET: HS256 key to mint one JWT per user
	Scope       string        // --scope, JWT scope claim; default send: and subscribe: on each destination
	Login       string        // --login, CONNECT login (broker Web-STOMP)
	Passcode    string        // --passcode, CONNECT passcode
	Vhost       string        // --vhost, CONNECT host header; default none (the server's default)
	Origin      string        // --origin, Origin header on the upgrade; default none
	Dest        string        // --dest, base destination; default /topic/bench.<run-id>; pair i>0 uses <dest>.<i>
	Mode        Mode          // --mode closed|rate, default closed
	Inflight    int           // --inflight, closed mode: messages in flight per pair, default 100
	Rate        float64       // --rate, rate mode: messages/s over all pairs, default 1000
	Size        int           // --size, body bytes, default 256 (at least 32)
	Duration    time.Duration // --duration, measured time, default 10s
	Warmup      time.Duration // --warmup, unmeasured time before it, default 2s
	Drain       time.Duration // --drain, wait for in-flight messages after publishing stops, default 2s
	Pairs       int           // --pairs, publisher/subscriber pairs, each on its own two connections, default 1
	Fanout      int           // --fanout, subscriber connections per pair (rate mode), default 1; subscriber j>0 of pair i is user <user>-<i>.<j>
	User        string        // --user, JWT subject prefix; pair i is <user>-<i>; default stompload-<run-id>
	RunID       string        // --run-id, default random
	Timeout     time.Duration // --connect-timeout, per connection (upgrade + CONNECT + SUBSCRIBE receipt), default 10s
	Conns       int           // --conns, idle mode: sessions to open and hold, default 1000
	PIDs        []namedPID    // --pids name=pid,...: idle mode reports each process's RSS delta per session
	AllowRemote bool          // --allow-remote, allow a non-loopback URL (default: loopback only)
	Quiet       bool          // --quiet, no progress lines

	// chat mode
	Users         int           // --users, simulated users connected over Ramp, default 100
	RoomSize      int           // --users-per-room, default 10: rooms = Users/RoomSize (the last may be smaller)
	Think         time.Duration // --think, mean of the exponential think time between a user's messages, default 1s
	Ramp          time.Duration // --ramp, users connect linearly over it, default 5s
	SpikeUsers    int           // --spike-users, extra users who connect at once after Duration, default 0 (no spike)
	SpikeDuration time.Duration // --spike-duration, how long the spike users send, default 5s
	RoomPrefix    string        // --room-prefix, rooms are /topic/<prefix>.<room>; default stompload.<run-id>

	// storm mode
	At         time.Duration // --at, with --storm-drop: when every client drops its connection; default 0 (wait for the server)
	StormDrop  bool          // --storm-drop, the clients close their own connections at --at (a network blip)
	Backoff    time.Duration // --backoff, base of the jittered exponential reconnect backoff, default 250ms
	MaxBackoff time.Duration // --max-backoff, its cap, default 10s (a 503's Retry-After is honoured whatever it says)
}

// maxDuration bounds a run: stompload is a benchmark tool, not a soak test.
const maxDuration = time.Hour

func parseConfig(args []string, getenv func(string) string, out io.Writer) (options, error) {
	var c options
	var mode string
	fs := flag.NewFlagSet("stompload", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.URL, "url", "ws://127.0.0.1:8080/ws", "WebSocket URL of the STOMP endpoint")
	fs.StringVar(&c.TokenSecret, "token-secret", "", "HS256 secret to mint one JWT per user (or STOMPLOAD_TOKEN_SECRET)")
	fs.StringVar(&c.Scope, "scope", "", "JWT scope claim (default: send: and subscribe: on every destination used)")
	fs.StringVar(&c.Login, "login", "", "CONNECT login, for a broker's own Web-STOMP")
	fs.StringVar(&c.Passcode, "passcode", "", "CONNECT passcode")
	fs.StringVar(&c.Vhost, "vhost", "", "CONNECT host header (virtual host)")
	fs.StringVar(&c.Origin, "origin", "", "Origin header sent with the upgrade")
	fs.StringVar(&c.Dest, "dest", "", "destination (default /topic/bench.<run-id>; pair i>0 gets .<i> appended)")
	fs.StringVar(&mode, "mode", string(ModeClosed), "closed (at most --inflight per pair), rate (--rate msgs/s), idle (--conns subscribed sessions held for --duration), chat (--users in rooms: ramp, sustained, spike) or storm (--conns sessions reconnecting at once)")
	fs.IntVar(&c.Conns, "conns", 1000, "idle mode: sessions to open, each subscribed to --dest, then held")
	var pids string
	fs.StringVar(&pids, "pids", "", "idle mode: name=pid,... of server processes (edge, beam.smp) whose RSS growth per session is reported")
	fs.IntVar(&c.Inflight, "inflight", 100, "closed mode: messages in flight per pair")
	fs.Float64Var(&c.Rate, "rate", 1000, "rate mode: messages per second over all pairs")
	fs.IntVar(&c.Size, "size", 256, "message body bytes")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measured duration")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "unmeasured warm-up before the measured duration")
	fs.DurationVar(&c.Drain, "drain", 2*time.Second, "how long to wait for in-flight messages at the end")
	fs.IntVar(&c.Pairs, "pairs", 1, "publisher/subscriber pairs, each on its own connections")
	fs.IntVar(&c.Fanout, "fanout", 1, "subscriber connections per pair, all on the pair's destination (rate mode): 1 publisher to N subscribers")
	fs.StringVar(&c.User, "user", "", "JWT subject prefix (default stompload-<run-id>)")
	fs.StringVar(&c.RunID, "run-id", "", "run id used in names (default random)")
	fs.DurationVar(&c.Timeout, "connect-timeout", 10*time.Second, "timeout to set up each connection")
	fs.BoolVar(&c.AllowRemote, "allow-remote", false, "allow a URL that is not on loopback")
	fs.BoolVar(&c.Quiet, "quiet", false, "do not print progress lines")
	fs.IntVar(&c.Users, "users", 100, "chat mode: simulated users, connected over --ramp")
	fs.IntVar(&c.RoomSize, "users-per-room", 10, "chat mode: users per room (rooms = users / users-per-room)")
	fs.DurationVar(&c.Think, "think", time.Second, "chat mode: mean think time between a user's messages (exponential)")
	fs.DurationVar(&c.Ramp, "ramp", 5*time.Second, "chat mode: users connect linearly over this time")
	fs.IntVar(&c.SpikeUsers, "spike-users", 0, "chat mode: extra users who connect at once after --duration and send for --spike-duration")
	fs.DurationVar(&c.SpikeDuration, "spike-duration", 5*time.Second, "chat mode: length of the spike phase")
	fs.StringVar(&c.RoomPrefix, "room-prefix", "", "chat and storm modes: destinations are /topic/<prefix>.<room> (default stompload.<run-id>)")
	fs.DurationVar(&c.At, "at", 0, "storm mode with --storm-drop: when the clients drop their connections (since the start)")
	fs.BoolVar(&c.StormDrop, "storm-drop", false, "storm mode: the clients drop their own connections at --at and reconnect at once")
	fs.DurationVar(&c.Backoff, "backoff", 250*time.Millisecond, "storm mode: base of the jittered exponential reconnect backoff")
	fs.DurationVar(&c.MaxBackoff, "max-backoff", 10*time.Second, "storm mode: cap of the reconnect backoff (a 503's Retry-After is honoured whatever it says)")
	if len(args) > 0 {
		args = args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	c.Mode = Mode(mode)
	var perr error
	if c.PIDs, perr = parsePIDs(pids); perr != nil {
		return c, perr
	}
	if c.TokenSecret == "" {
		c.TokenSecret = getenv("STOMPLOAD_TOKEN_SECRET")
	}
	if c.RunID == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		c.RunID = hex.EncodeToString(b)
	}
	if c.Dest == "" {
		c.Dest = "/topic/bench." + c.RunID
	}
	if c.User == "" {
		c.User = "stompload-" + c.RunID
	}
	if c.RoomPrefix == "" {
		c.RoomPrefix = "stompload." + c.RunID
	}
	return c, c.validate()
}

// validate reports every problem at once.
func (c options) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	u, err := url.Parse(c.URL)
	switch {
	case err != nil:
		bad("--url: %v", err)
	case u.Scheme != "ws" && u.Scheme != "wss":
		bad("--url: scheme must be ws or wss, not %q", u.Scheme)
	case !c.AllowRemote && !isLoopback(u.Hostname()):
		bad("--url: %s is not a loopback address (pass --allow-remote to load another machine)", u.Hostname())
	}
	switch {
	case c.TokenSecret != "" && c.Login != "":
		bad("--token-secret and --login are exclusive")
	case c.TokenSecret == "" && c.Login == "":
		bad("one of --token-secret (or STOMPLOAD_TOKEN_SECRET) or --login/--passcode is needed")
	}
	switch c.Mode {
	case ModeClosed:
		if c.Inflight < 1 {
			bad("--inflight must be at least 1")
		}
	case ModeRate:
		if c.Rate <= 0 {
			bad("--rate must be positive")
		}
	case ModeIdle:
		if c.Conns < 1 || c.Conns > 100000 {
			bad("--conns must be between 1 and 100000")
		}
	case ModeChat:
		if c.Users < 1 || c.Users > 100000 {
			bad("--users must be between 1 and 100000")
		}
		if c.RoomSize < 1 {
			bad("--users-per-room must be at least 1")
		}
		if c.Think <= 0 {
			bad("--think must be positive")
		}
		if c.Ramp < 0 || c.Ramp > maxDuration {
			bad("--ramp must be between 0 and %s", maxDuration)
		}
		if c.SpikeUsers < 0 || c.SpikeUsers > 100000 {
			bad("--spike-users must be between 0 and 100000")
		}
		if c.SpikeUsers > 0 && (c.SpikeDuration <= 0 || c.SpikeDuration > maxDuration) {
			bad("--spike-duration must be positive and at most %s", maxDuration)
		}
	case ModeStorm:
		if c.Conns < 1 || c.Conns > 100000 {
			bad("--conns must be between 1 and 100000")
		}
		if c.StormDrop && (c.At <= 0 || c.At >= c.Duration) {
			bad("--storm-drop needs --at between 0 and --duration")
		}
		if !c.StormDrop && c.At != 0 {
			bad("--at needs --storm-drop (without it the storm starts when the server closes the connections)")
		}
		if c.Backoff <= 0 || c.MaxBackoff < c.Backoff {
			bad("--backoff must be positive and --max-backoff at least --backoff")
		}
	default:
		bad("--mode must be closed, rate, idle, chat or storm, not %q", c.Mode)
	}
	if strings.ContainsAny(c.RoomPrefix, "/\n\r:\x00") {
		bad("--room-prefix %q may not contain '/', ':' or control characters", c.RoomPrefix)
	}
	if c.Size < minBody || c.Size > 1<<20 {
		bad("--size must be between %d and %d bytes", minBody, 1<<20)
	}
	if c.Duration <= 0 || c.Duration > maxDuration {
		bad("--duration must be positive and at most %s", maxDuration)
	}
	if c.Warmup < 0 || c.Warmup > maxDuration {
		bad("--warmup must be between 0 and %s", maxDuration)
	}
	if c.Drain < 0 || c.Drain > time.Minute {
		bad("--drain must be between 0 and 1m")
	}
	if c.Timeout <= 0 {
		bad("--connect-timeout must be positive")
	}
	if c.Pairs < 1 || c.Pairs > 5000 {
		bad("--pairs must be between 1 and 5000")
	}
	if c.Fanout < 1 || c.Fanout > 20000 {
		bad("--fanout must be between 1 and 20000")
	} else if c.Fanout > 1 && c.Mode != ModeRate {
		bad("--fanout above 1 needs --mode rate (a closed loop counts one receiver per message)")
	}
	if !strings.HasPrefix(c.Dest, "/") || strings.ContainsAny(c.Dest, "\n\r:\x00") {
		bad("--dest %q is not a STOMP destination", c.Dest)
	}
	return errors.Join(errs...)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// dest is pair i's destination.
func (c options) dest(i int) string {
	if i == 0 {
		return c.Dest
	}
	return fmt.Sprintf("%s.%d", c.Dest, i)
}

// scope is the JWT scope granting what pair i does.
func (c options) scope(i int) string {
	if c.Scope != "" {
		return c.Scope
	}
	return "send:" + c.dest(i) + " subscribe:" + c.dest(i)
}

// namedPID is a process whose memory the idle mode watches.
type namedPID struct {
	Name string
	PID  int
}

func parsePIDs(s string) ([]namedPID, error) {
	if s == "" {
		return nil, nil
	}
	var out []namedPID
	for _, kv := range strings.Split(s, ",") {
		name, v, ok := strings.Cut(kv, "=")
		pid, err := strconv.Atoi(v)
		if !ok || name == "" || err != nil || pid <= 0 {
			return nil, fmt.Errorf("--pids: %q is not name=pid", kv)
		}
		out = append(out, namedPID{name, pid})
	}
	return out, nil
}
