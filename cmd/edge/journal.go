package main

import (
	"net/http"
)

// historyOff answers /api/history on an edge without a database.
func historyOff(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte(`{"error":"history_off","message":"this edge runs without EDGE_DATABASE_URL: history is off"}` + "\n"))
}
