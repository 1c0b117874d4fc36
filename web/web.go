// Package web serves the demo chat page and the browser client helper:
// plain HTML and JavaScript using an embedded copy of @stomp/stompjs (no
// CDN), so it works offline and under a strict Content-Security-Policy.
//
//	GET /                          the demo chat (static/index.html, app.js)
//	GET /client/stompgate.js       the client helper, an ES module (docs/CLIENT.md)
//	GET /client/stompgate.d.ts     its TypeScript declarations
//	GET /client/stomp.umd.min.js   the embedded @stomp/stompjs 7 bundle it loads
//	                               (also at /stomp.umd.min.js, as before)
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var static embed.FS

// Handler serves the demo page at / and its assets.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self' 'unsafe-inline'")
		h.Set("X-Content-Type-Options", "nosniff")
		// Embedded files carry no modification time: without this a browser
		// could keep an old helper after an upgrade of the edge.
		h.Set("Cache-Control", "no-cache")
		switch p := r.URL.Path; {
		case p == "/client/stomp.umd.min.js" || p == "/client/stomp.LICENSE":
			// One embedded copy of stompjs, beside the helper that imports it.
			r2 := *r
			u := *r.URL
			u.Path = strings.TrimPrefix(p, "/client")
			r2.URL = &u
			r = &r2
		case strings.HasSuffix(p, ".d.ts"):
			h.Set("Content-Type", "application/typescript; charset=utf-8")
		case strings.HasSuffix(p, ".mjs"):
			h.Set("Content-Type", "text/javascript; charset=utf-8")
		}
		files.ServeHTTP(w, r)
	})
}
