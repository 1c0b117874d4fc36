package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/gorilla/websocket"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/stomp"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key as
// PEM files and returns them with a pool trusting the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "stompgate test edge"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "edge.crt"), filepath.Join(dir, "edge.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}

func TestRunRefusesHalfTLS(t *testing.T) {
	certFile, _, _ := selfSigned(t)
	env := map[string]string{"EDGE_JWT_HS256_SECRET": testenv.Secret, "EDGE_TLS_CERT": certFile}
	err := run(context.Background(), nil, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "EDGE_TLS_KEY") {
		t.Fatalf("error %v should name EDGE_TLS_KEY", err)
	}
}

// TestRunServesTLS: with EDGE_TLS_CERT and EDGE_TLS_KEY the edge serves
// https and wss; a wss client trusting the generated certificate connects
// and round-trips a message through the real RabbitMQ, and a plain ws
// client gets nowhere.
func TestRunServesTLS(t *testing.T) {
	vhost := testenv.Vhost(t)
	certFile, keyFile, roots := selfSigned(t)
	env := map[string]string{
		"EDGE_JWT_HS256_SECRET": testenv.Secret, "EDGE_LISTEN": "127.0.0.1:0",
		"EDGE_TLS_CERT": certFile, "EDGE_TLS_KEY": keyFile,
		"EDGE_BROKER_LOGIN": "guest", "EDGE_BROKER_PASSCODE": "guest", "EDGE_BROKER_VHOST": vhost,
		"EDGE_DRAIN_DELAY": "0s", "EDGE_DRAIN_PERIOD": "0s",
	}
	addr := startRun(t, env)
	tlsConf := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf, DisableKeepAlives: true}}
	testenv.WaitFor(t, 10*time.Second, func() error {
		resp, err := hc.Get("https://" + addr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("/readyz over https: %s", resp.Status)
		}
		return nil
	})

	// Plain WebSocket on the TLS port: no upgrade.
	plain := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: []string{"v12.stomp"}}
	if c, _, err := plain.Dial("ws://"+addr+"/ws", nil); err == nil {
		c.Close()
		t.Error("a plain ws:// upgrade succeeded on the TLS listener")
	}

	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: []string{"v12.stomp"}, TLSClientConfig: tlsConf}
	ws, resp, err := d.Dial("wss://"+addr+"/ws", http.Header{"Origin": {"http://localhost:3000"}})
	if err != nil {
		t.Fatalf("wss dial: %v (%v)", err, resp)
	}
	defer ws.Close()
	if ws.Subprotocol() != "v12.stomp" {
		t.Fatalf("subprotocol %q", ws.Subprotocol())
	}
	parser := stomp.NewParser(stomp.Limits{MaxFrameBytes: 1 << 20, MaxHeaders: 100, MaxHeaderBytes: 8 << 10}, stomp.ServerCommands)
	send := func(cmd string, kv ...string) {
		t.Helper()
		b := stomp.AppendFrame(nil, frame.New(cmd, kv...), stomp.V12)
		if cmd == frame.SEND {
			b = stomp.AppendFrame(nil, &frame.Frame{Command: cmd, Header: frame.NewHeader(kv...), Body: []byte("over tls")}, stomp.V12)
		}
		_ = ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
			t.Fatal(err)
		}
	}
	next := func(want string) *frame.Frame {
		t.Helper()
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			if f, err := parser.Next(); err != nil {
				t.Fatal(err)
			} else if f != nil {
				f.Body = append([]byte(nil), f.Body...)
				if f.Command != want {
					t.Fatalf("got %s %v %q, want %s", f.Command, f.Header, f.Body, want)
				}
				return f
			}
			_, msg, err := ws.ReadMessage()
			if err != nil {
				t.Fatalf("waiting for %s: %v", want, err)
			}
			parser.Feed(msg)
		}
	}
	send(frame.CONNECT, "accept-version", "1.2", "host", "/", "heart-beat", "0,0", "passcode", testenv.Token(t, "tls-user", nil))
	if f := next(frame.CONNECTED); f.Header.Get("user-name") != "tls-user" {
		t.Fatalf("CONNECTED %v", f.Header)
	}
	send(frame.SUBSCRIBE, "id", "s1", "destination", "/topic/tls.check", "receipt", "r1")
	next(frame.RECEIPT)
	send(frame.SEND, "destination", "/topic/tls.check", "content-type", "text/plain")
	if f := next(frame.MESSAGE); string(f.Body) != "over tls" || f.Header.Get("subscription") != "s1" {
		t.Fatalf("MESSAGE %v %q", f.Header, f.Body)
	}
	send(frame.DISCONNECT, "receipt", "bye")
	next(frame.RECEIPT)
}
