package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
)

type grantKey struct{}

// GrantFrom returns the grant Require stored in the request context; nil if none (an
// anonymous read).
func GrantFrom(ctx context.Context) *Grant {
	g, _ := ctx.Value(grantKey{}).(*Grant)
	return g
}

// TokenFrom returns the token of "Authorization: Bearer <t>", else the ?token= query
// parameter, else "".
func TokenFrom(r *http.Request) string {
	if t, ok := bearer(r); ok {
		return t
	}
	return r.URL.Query().Get("token")
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	// The scheme is case-insensitive (RFC 9110, section 11.1).
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") {
		return "", false
	}
	t := strings.TrimSpace(h[7:])
	return t, t != ""
}

// flagsFor names the flags that give a token for s, for refusal messages.
func flagsFor(s Scope) string {
	switch s {
	case ScopeAdmin:
		return "--admin-token or --token-file"
	case ScopeFetch:
		return "--token-file (scope fetch) or --admin-token"
	case ScopeRead:
		return "--token-file (scope read)"
	case ScopeAgent:
		return "--agent-token or --token-file (scope agent)"
	}
	return "--token-file (scope " + s.String() + ")"
}

// Require wraps h so that it runs only for a caller allowed s (one scope); what names the
// operation in refusals and audit lines. The rules:
//   - a token was sent: unknown → 401; known without s → 403; else h runs with the grant in
//     the request context;
//   - no token, read: allowed unless some grant names scope read (then 401);
//   - no token, any other scope: 401 if some grant Has(s); else allowed from
//     --trusted-networks only (grant "trusted-network"), 403 from anywhere else.
//
// The credential is removed from the request h sees, so a handler that logs or forwards the
// URL or the headers cannot leak it.
func (a *Authority) Require(s Scope, what string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if tok := TokenFrom(r); tok != "" {
			g, ok := a.Lookup(tok)
			switch {
			case !ok:
				a.refuse(w, r, nil, what, ReasonBadToken, http.StatusUnauthorized,
					fmt.Sprintf("%s: the token sent is not a configured token; use one from %s", what, flagsFor(s)))
			case !g.Has(s):
				a.refuse(w, r, g, what, ReasonScope, http.StatusForbidden,
					fmt.Sprintf("%s: token %q does not have scope %s; use one from %s", what, g.Name, s, flagsFor(s)))
			default:
				h(w, withoutCredential(r, g))
			}
			return
		}
		// Reads close only for a read token: an admin token (which implies read) must not
		// lock the dashboard and the metrics scraper out.
		if s == ScopeRead {
			if a.hasExplicit(ScopeRead) {
				a.refuse(w, r, nil, what, ReasonNoToken, http.StatusUnauthorized, noTokenMessage(what, s))
				return
			}
			h(w, r)
			return
		}
		if a.Configured(s) {
			a.refuse(w, r, nil, what, ReasonNoToken, http.StatusUnauthorized, noTokenMessage(what, s))
			return
		}
		if !a.Trusted(r.RemoteAddr) {
			a.refuse(w, r, nil, what, ReasonUntrusted, http.StatusForbidden, fmt.Sprintf(
				"%s without a credential is accepted only from --trusted-networks, and this request came from %s; send Authorization: Bearer <token> with a token from %s",
				what, remoteIP(r.RemoteAddr), flagsFor(s)))
			return
		}
		h(w, withoutCredential(r, &Grant{Name: nameTrusted, Scopes: s}))
	}
}

func noTokenMessage(what string, s Scope) string {
	return fmt.Sprintf("%s needs a token (Authorization: Bearer <token> or ?token=<token>) from %s", what, flagsFor(s))
}

// withoutCredential returns r carrying g in its context and without the Authorization header
// or the token query parameter.
func withoutCredential(r *http.Request, g *Grant) *http.Request {
	r2 := r.Clone(context.WithValue(r.Context(), grantKey{}, g))
	r2.Header.Del("Authorization")
	if q := r2.URL.Query(); q.Has("token") {
		q.Del("token")
		r2.URL.RawQuery = q.Encode()
	}
	return r2
}

func remoteIP(remoteAddr string) string {
	if host, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return host
	}
	return remoteAddr
}

// refuse audits a refusal and answers it as JSON.
func (a *Authority) refuse(w http.ResponseWriter, r *http.Request, g *Grant, what, reason string, status int, msg string) {
	a.Refuse(r, g, what, reason)
	writeRefusal(w, status, msg)
}

func writeRefusal(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	if status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="wsregistry"`)
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Status  int    `json:"status"`
		Message string `json:"message"`
	}{status, msg})
}

// agentTokenHelp is how an agent can send its token; unchanged agents can only change the
// registry address, hence the path prefix.
const agentTokenHelp = "use the registry address host:port/t/<token>, or send Authorization: Bearer <token>, or add ?token=<token>"

// Agent checks an agent connection before the WebSocket upgrade. The token is taken from the
// path prefix "/t/<token>/<host>/<port>", else Authorization: Bearer, else ?token=; path is
// r.URL.Path without the prefix (unchanged when there is none). Without any agent grant
// everything is allowed (nil grant, status 0), as the agent port is open by default; a
// prefix is still stripped, so agents can be given their tokens before tokens are required.
// Otherwise a caller without a token gets 401, one with a token lacking ScopeAgent 403, and
// msg to send; the refusal is already audited. The caller checks namespaces with
// g.AllowsNamespace.
func (a *Authority) Agent(r *http.Request) (g *Grant, path string, status int, msg string) {
	tok, rest, ok := cutTokenPrefix(r.URL.Path)
	path = rest
	if !a.Configured(ScopeAgent) {
		return nil, path, 0, ""
	}
	if !ok {
		tok = TokenFrom(r)
	}
	const what = "agent connect"
	g, found := a.Lookup(tok)
	switch {
	case tok == "":
		a.Refuse(r, nil, what, ReasonNoToken)
		return nil, path, http.StatusUnauthorized, "this registry requires an agent token: " + agentTokenHelp
	case !found:
		a.Refuse(r, nil, what, ReasonBadToken)
		return nil, path, http.StatusUnauthorized, "the agent token sent is not a configured token: " + agentTokenHelp
	case !g.Has(ScopeAgent):
		a.Refuse(r, g, what, ReasonScope)
		return nil, path, http.StatusForbidden, fmt.Sprintf("token %q does not have scope agent (from %s): %s", g.Name, flagsFor(ScopeAgent), agentTokenHelp)
	default:
		return g, path, 0, ""
	}
}

// cutTokenPrefix splits "/t/<token>/<rest>" into the token and "/<rest>". A path with no
// slash after the token ("/t/8080") is not a prefix: it is the agent at host "t".
func cutTokenPrefix(path string) (tok, rest string, ok bool) {
	after, found := strings.CutPrefix(path, "/t/")
	if !found {
		return "", path, false
	}
	i := strings.IndexByte(after, '/')
	if i < 0 {
		return "", path, false
	}
	return after[:i], after[i:], true
}
