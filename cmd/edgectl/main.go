// Command edgectl is the stompgate operator CLI: `edgectl token` mints a
// development JWT with the edge's HS256 secret; `edgectl revoke`,
// `unrevoke` and `revocations` manage stompgate_revocations in
// EDGE_DATABASE_URL (every edge closes a revoked subject's sessions within
// 2 s).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/oklog/ulid/v2"
)

func main() {
	if err := run(context.Background(), os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "edgectl:", err)
		os.Exit(2)
	}
}

const usage = `usage: edgectl <command> [flags]

commands:
  token        mint a development JWT signed with EDGE_JWT_HS256_SECRET
               --sub S (required) --scope "ENTRIES" --ttl 1h --iss ISS --aud AUD --jti ID
               scope entries are subscribe:<pattern>, send:<pattern>, declare:<pattern>;
               in a pattern, after the prefix, '*' is one '.'-segment and '#' any number:
                 --scope "subscribe:/topic/room.* send:/topic/room.*"
                 --scope "subscribe:/topic/# send:/app/chat.# send:/user/*/queue/inbox"
                 --scope "subscribe:/queue/jobs declare:/queue/jobs"
  revoke       revoke a subject or one token; open sessions get ERROR revoked
               --subject S | --jti J  [--until RFC3339|DURATION] [--reason R]
  unrevoke     delete every revocation of a subject or a token
               --subject S | --jti J
  revocations  list stompgate_revocations (in force and expired)
  topology     check: compare the live broker with rabbitmq/definitions.json and name
               each difference (edgectl topology check --help)

revoke, unrevoke and revocations use EDGE_DATABASE_URL (or --database URL).
`

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) < 2 {
		return fmt.Errorf("no command\n%s", usage)
	}
	switch args[1] {
	case "token":
		return token(args[2:], getenv, stdout)
	case "revoke":
		return revoke(ctx, args[2:], getenv, stdout)
	case "unrevoke":
		return unrevoke(ctx, args[2:], getenv, stdout)
	case "revocations":
		return revocations(ctx, args[2:], getenv, stdout)
	case "topology":
		return topology(ctx, args[2:], getenv, stdout)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", args[1], usage)
}

func token(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	sub := fs.String("sub", "", "subject (user id), required")
	scope := fs.String("scope", "", "space-separated scope entries, e.g. \"subscribe:/topic/room.* send:/topic/room.*\"")
	ttl := fs.Duration("ttl", time.Hour, "lifetime")
	iss := fs.String("iss", getenv("EDGE_JWT_ISSUER"), "issuer claim")
	aud := fs.String("aud", getenv("EDGE_JWT_AUDIENCE"), "audience claim")
	secret := fs.String("secret", getenv("EDGE_JWT_HS256_SECRET"), "HS256 secret (default $EDGE_JWT_HS256_SECRET)")
	jti := fs.String("jti", "", "token id (default: a new ULID); revoke one token with edgectl revoke --jti")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sub == "" {
		return fmt.Errorf("token: --sub is required")
	}
	if len(*secret) < 32 {
		return fmt.Errorf("token: EDGE_JWT_HS256_SECRET (or --secret) must be at least 32 bytes")
	}
	now := time.Now()
	claims := jwt.MapClaims{
		"sub": *sub,
		"iat": now.Unix(),
		"exp": now.Add(*ttl).Unix(),
		"jti": *jti,
	}
	if *jti == "" {
		claims["jti"] = ulid.Make().String()
	}
	if s := strings.TrimSpace(*scope); s != "" {
		claims["scope"] = s
	}
	if *iss != "" {
		claims["iss"] = *iss
	}
	if *aud != "" {
		claims["aud"] = *aud
	}
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(*secret))
	if err != nil {
		return fmt.Errorf("token: sign: %w", err)
	}
	fmt.Fprintln(stdout, signed)
	return nil
}
