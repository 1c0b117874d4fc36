// Package config loads and validates the configuration of every stompgate
// binary from environment variables. Each binary has one plain struct
// (Edge, Persister, ...) loaded once by a Load function that reports every
// problem together, each naming the variable at fault.
package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Getenv looks up an environment variable; os.Getenv fits. Tests pass maps.
type Getenv func(string) string

// env reads typed settings and collects every problem, so a bad
// configuration is reported in one go at start.
type env struct {
	get  Getenv
	errs []error
}

func (e *env) fail(name, format string, args ...any) {
	e.errs = append(e.errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
}

func (e *env) err() error { return errors.Join(e.errs...) }

func (e *env) raw(name string) (string, bool) {
	v := strings.TrimSpace(e.get(name))
	return v, v != ""
}

func (e *env) String(name, def string) string {
	if v, ok := e.raw(name); ok {
		return v
	}
	return def
}

func (e *env) List(name, def string) []string {
	var out []string
	for _, p := range strings.Split(e.String(name, def), ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (e *env) Bool(name string, def bool) bool {
	v, ok := e.raw(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.fail(name, "%q is not a boolean (true/false)", v)
		return def
	}
	return b
}

// SchedPolicy reads a process scheduling policy: "batch" (the default) or
// "other"; internal/sched applies it.
func (e *env) SchedPolicy(name string) string {
	v := strings.ToLower(e.String(name, "batch"))
	if v != "batch" && v != "other" {
		e.fail(name, "%q is neither batch nor other", v)
		return "batch"
	}
	return v
}

func (e *env) Int(name string, def, min int) int {
	v, ok := e.raw(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		e.fail(name, "%q is not a whole number", v)
		return def
	}
	if n < min {
		e.fail(name, "%d is below the minimum %d", n, min)
		return def
	}
	return n
}

// Bytes accepts a plain byte count or a KiB/MiB suffix ("64KiB", "512KiB").
func (e *env) Bytes(name string, def, min int) int {
	v, ok := e.raw(name)
	if !ok {
		return def
	}
	mult := 1
	num := v
	for _, s := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"B", 1}} {
		if strings.HasSuffix(v, s.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(v, s.suffix)), s.mult
			break
		}
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 {
		e.fail(name, "%q is not a byte size (e.g. 65536, 64KiB, 1MiB)", v)
		return def
	}
	if n*mult < min {
		e.fail(name, "%d bytes is below the minimum %d", n*mult, min)
		return def
	}
	return n * mult
}

func (e *env) Duration(name string, def, min time.Duration) time.Duration {
	v, ok := e.raw(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		e.fail(name, "%q is not a duration (Go syntax, e.g. 25s, 500ms)", v)
		return def
	}
	if d < min {
		e.fail(name, "%s is below the minimum %s", d, min)
		return def
	}
	return d
}

// Rate is messages (or connections) per second; 0 means unlimited. The
// burst is twice the rate (SPEC §4).
type Rate struct {
	PerSecond float64
	Burst     int
}

// Unlimited reports whether the rate imposes no limit.
func (r Rate) Unlimited() bool { return r.PerSecond <= 0 }

func (e *env) Rate(name string, def float64) Rate {
	v, ok := e.raw(name)
	f := def
	if ok {
		var err error
		f, err = strconv.ParseFloat(v, 64)
		if err != nil || f < 0 {
			e.fail(name, "%q is not a rate (messages per second, 0 = unlimited)", v)
			f = def
		}
	}
	burst := int(2 * f)
	if f > 0 && burst < 1 {
		burst = 1
	}
	return Rate{PerSecond: f, Burst: burst}
}
