// Command benchproxy is a do-nothing TCP relay for scripts/bench.sh: it
// forwards every connection accepted on LISTEN to TARGET byte for byte
// (splice on Linux), parsing nothing. Put in front of RabbitMQ Web-STOMP it
// measures what one extra process hop costs on the machine — the floor of
// any separate-process relay, the edge included.
//
//	benchproxy LISTEN TARGET      e.g. benchproxy 127.0.0.1:0 127.0.0.1:15674
//
// It prints "listening on ADDR" once ready and runs until killed. Loopback
// only by intent: it has no limits and no authentication.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: benchproxy LISTEN TARGET")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchproxy:", err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchproxy:", err)
			os.Exit(1)
		}
		go relay(c, os.Args[2])
	}
}

// relay copies both ways between c and a new connection to target until
// either side closes.
func relay(c net.Conn, target string) {
	defer c.Close()
	b, err := net.Dial("tcp", target)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchproxy:", err)
		return
	}
	defer b.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(b, c)
		_ = b.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(c, b)
	_ = c.(*net.TCPConn).CloseWrite()
	<-done
}
