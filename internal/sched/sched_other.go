//go:build !linux

package sched

import (
	"errors"
	"fmt"
)

// Apply is only supported on Linux; elsewhere Other is accepted and Batch
// is an error.
func Apply(p Policy) error {
	switch p {
	case Other:
		return nil
	case Batch:
		return errors.ErrUnsupported
	}
	return fmt.Errorf("unknown scheduling policy %q (want %q or %q)", p, Other, Batch)
}
