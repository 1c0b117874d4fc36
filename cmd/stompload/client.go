package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/golang-jwt/jwt/v5"

	"github.com/stompgate/stompgate/stomp"
	"github.com/stompgate/stompgate/stomp/stompws"
)

// writeTimeout bounds every flush to the socket.
const writeTimeout = 10 * time.Second

// limits bound the frames stompload accepts from the server.
var limits = stomp.Limits{MaxFrameBytes: 4 << 20, MaxHeaders: 1000, MaxHeaderBytes: 64 << 10}

// dial opens a WebSocket, sends CONNECT for user and waits for CONNECTED.
func dial(ctx context.Context, c options, user string, pair int) (*stompws.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	h := http.Header{}
	if c.Origin != "" {
		h.Set("Origin", c.Origin)
	}
	conn, _, err := stompws.Dial(ctx, c.URL, stompws.Options{Header: h, HandshakeTimeout: c.Timeout, Limits: limits})
	if err != nil {
		return nil, err
	}
	var hdr []string
	if c.Vhost != "" {
		hdr = append(hdr, frame.Host, c.Vhost)
	}
	if c.TokenSecret != "" {
		tok, err := mintToken(c, user, pair)
		if err != nil {
			conn.Close()
			return nil, err
		}
		hdr = append(hdr, "Authorization", "Bearer "+tok)
	} else {
		hdr = append(hdr, frame.Login, c.Login, frame.Passcode, c.Passcode)
	}
	if _, err := conn.Connect(ctx, hdr...); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// subscribe subscribes conn to dest and waits for the receipt, so that
// nothing published afterwards is missed.
func subscribe(ctx context.Context, conn *stompws.Conn, dest string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return conn.Subscribe(ctx, "0", dest)
}

func mintToken(c options, user string, pair int) (string, error) {
	claims := jwt.MapClaims{
		"sub":   user,
		"exp":   time.Now().Add(c.Warmup + c.Duration + c.Drain + time.Hour).Unix(),
		"iat":   time.Now().Unix(),
		"jti":   fmt.Sprintf("%s-%d-%d", c.RunID, pair, time.Now().UnixNano()),
		"scope": c.scope(pair),
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(c.TokenSecret))
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return tok, nil
}
