package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate and its key as PEM files.
func writeCert(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{name}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestLoadEdgeTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir, "a")
	otherCert, _ := writeCert(t, dir, "b")
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name      string
		cert, key string
		wantErr   []string // variables the error must name; nil = valid
	}{
		{"neither", "", "", nil},
		{"both", cert, key, nil},
		{"cert only", cert, "", []string{"EDGE_TLS_KEY"}},
		{"key only", "", key, []string{"EDGE_TLS_CERT"}},
		{"cert unreadable", missing, key, []string{"EDGE_TLS_CERT", "missing.pem"}},
		{"key unreadable", cert, missing, []string{"EDGE_TLS_KEY", "missing.pem"}},
		{"key of another certificate", otherCert, key, []string{"EDGE_TLS_CERT", "EDGE_TLS_KEY"}},
		{"not PEM", key, cert, []string{"EDGE_TLS_CERT"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadEdge(envMap(map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_TLS_CERT": tc.cert, "EDGE_TLS_KEY": tc.key}))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if c.TLSCert != tc.cert || c.TLSKey != tc.key {
					t.Fatalf("TLSCert %q TLSKey %q", c.TLSCert, c.TLSKey)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
}
