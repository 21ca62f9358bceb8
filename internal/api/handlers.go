package api

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func (s *Server) whoami(_ context.Context, c *call, _ noBody) (auth.Principal, error) {
	return c.p, nil
}

// audit appends the record of a change made by c's principal.
// Platform-scope changes go to [PlatformChain].
func (s *Server) audit(ctx context.Context, tx store.Tx, c *call, tenant event.TenantID, action, target string, details any) error {
	if tenant == "" {
		tenant = PlatformChain
	}
	var raw json.RawMessage
	if details != nil {
		b, err := json.Marshal(details)
		if err != nil {
			return fmt.Errorf("api: audit details: %w", err)
		}
		raw = b
	}
	_, err := audit.Append(ctx, tx, audit.Entry{Tenant: tenant, Time: s.opt.Clock.Now(), Actor: c.p.Actor(),
		Action: action, Target: target, Details: raw})
	return err
}

func (s *Server) newID(prefix string) (string, error) {
	var b [8]byte
	if _, err := io.ReadFull(s.opt.Rand, b[:]); err != nil {
		return "", fmt.Errorf("api: random id: %w", err)
	}
	return prefix + hex.EncodeToString(b[:]), nil
}

// --- tenants

// CreateTenantRequest creates a tenant.
type CreateTenantRequest struct {
	ID   event.TenantID `json:"id"`
	Name string         `json:"name"`
}

func (s *Server) createTenant(ctx context.Context, c *call, req CreateTenantRequest) (store.Tenant, error) {
	if req.Name == "" {
		req.Name = string(req.ID)
	}
	if len(req.Name) > 200 {
		return store.Tenant{}, errorf(http.StatusBadRequest, CodeInvalid, "name longer than 200 bytes")
	}
	t := store.Tenant{ID: req.ID, Name: req.Name, CreatedAt: s.opt.Clock.Now().UTC()}
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, t); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, "", "tenant.create", "tenant:"+string(t.ID), map[string]string{"name": t.Name})
	})
	return t, err
}

func (s *Server) listTenants(ctx context.Context, _ *call, _ noBody) ([]store.Tenant, error) {
	var ts []store.Tenant
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		ts, err = tx.Tenants().List(ctx)
		return err
	})
	return nonNil(ts), err
}

func (s *Server) getTenant(ctx context.Context, c *call, _ noBody) (store.Tenant, error) {
	var t store.Tenant
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		t, err = tx.Tenants().Get(ctx, c.tenant)
		return err
	})
	return t, err
}

func (s *Server) deleteTenant(ctx context.Context, c *call, _ noBody) (noBody, error) {
	return noBody{}, s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Delete(ctx, c.tenant); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, "", "tenant.delete", "tenant:"+string(c.tenant), nil)
	})
}

// --- operators

// CreateOperatorRequest creates an operator in the route's scope.
type CreateOperatorRequest struct {
	Name string     `json:"name"`
	Role store.Role `json:"role"`
}

// checkRole refuses roles that do not fit the scope: platform-admin only on
// platform routes, and only tenant roles inside a tenant.
func checkRole(c *call, r store.Role) error {
	if !auth.ValidRole(r) {
		return errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("unknown role %q", r))
	}
	if (c.tenant == "") != (r == store.RolePlatformAdmin) {
		if c.tenant == "" {
			return errorf(http.StatusBadRequest, CodeInvalid, "platform operators and tokens have role platform-admin")
		}
		return errorf(http.StatusBadRequest, CodeInvalid, "role platform-admin exists only on platform routes")
	}
	return nil
}

func checkName(name string) error {
	if strings.TrimSpace(name) == "" || len(name) > 200 {
		return errorf(http.StatusBadRequest, CodeInvalid, "name must be 1-200 bytes")
	}
	return nil
}

func (s *Server) createOperator(ctx context.Context, c *call, req CreateOperatorRequest) (store.Operator, error) {
	if err := checkName(req.Name); err != nil {
		return store.Operator{}, err
	}
	if req.Role == "" && c.tenant == "" {
		req.Role = store.RolePlatformAdmin
	}
	if err := checkRole(c, req.Role); err != nil {
		return store.Operator{}, err
	}
	id, err := s.newID("op-")
	if err != nil {
		return store.Operator{}, err
	}
	o := store.Operator{ID: id, Tenant: c.tenant, Name: req.Name, Role: req.Role, CreatedAt: s.opt.Clock.Now().UTC()}
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Operators().Create(ctx, o); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, c.tenant, "operator.create", "operator:"+o.ID, map[string]string{"name": o.Name, "role": string(o.Role)})
	})
	return o, err
}

func (s *Server) listOperators(ctx context.Context, c *call, _ noBody) ([]store.Operator, error) {
	var os []store.Operator
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		os, err = tx.Operators().List(ctx, c.tenant)
		return err
	})
	return nonNil(os), err
}

func (s *Server) getOperator(ctx context.Context, c *call, _ noBody) (store.Operator, error) {
	var o store.Operator
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		o, err = tx.Operators().Get(ctx, c.tenant, c.r.PathValue("id"))
		return err
	})
	return o, err
}

func (s *Server) deleteOperator(ctx context.Context, c *call, _ noBody) (noBody, error) {
	id := c.r.PathValue("id")
	if c.tenant == "" && id == c.p.Operator {
		return noBody{}, errorf(http.StatusConflict, CodeConflict, "a platform admin cannot delete itself")
	}
	return noBody{}, s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Operators().Delete(ctx, c.tenant, id); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, c.tenant, "operator.delete", "operator:"+id, nil)
	})
}

// --- tokens

// CreateTokenRequest creates an API token. Operator names an existing
// operator of the scope; when empty, a service operator called Name with
// Role is created alongside the token. Role defaults to the operator's and
// may not exceed it. TTL is a Go duration ("720h"); the server default when
// empty.
type CreateTokenRequest struct {
	Name     string     `json:"name"`
	Operator string     `json:"operator,omitempty"`
	Role     store.Role `json:"role,omitempty"`
	TTL      string     `json:"ttl,omitempty"`
}

// CreatedToken is returned once: Secret is never shown again.
type CreatedToken struct {
	Token  store.Token `json:"token"`
	Secret string      `json:"secret"`
}

func roleRank(r store.Role) int {
	switch r {
	case store.RolePlatformAdmin:
		return 4
	case store.RoleAdmin:
		return 3
	case store.RoleOperator, store.RoleAuditor:
		return 2
	case store.RoleViewer:
		return 1
	}
	return 0
}

func (s *Server) createToken(ctx context.Context, c *call, req CreateTokenRequest) (CreatedToken, error) {
	if err := checkName(req.Name); err != nil {
		return CreatedToken{}, err
	}
	ttl := s.opt.TokenTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d < time.Minute || d > 5*365*24*time.Hour {
			return CreatedToken{}, errorf(http.StatusBadRequest, CodeInvalid, "ttl must be a duration between 1m and 43800h")
		}
		ttl = d
	}
	sec, err := auth.NewSecret(s.opt.Rand)
	if err != nil {
		return CreatedToken{}, err
	}
	now := s.opt.Clock.Now().UTC()
	tok := store.Token{ID: sec.ID, Tenant: c.tenant, Name: req.Name, Hash: sec.Hash, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	var newOp *store.Operator
	if req.Operator == "" {
		if req.Role == "" && c.tenant == "" {
			req.Role = store.RolePlatformAdmin
		}
		if err := checkRole(c, req.Role); err != nil {
			return CreatedToken{}, err
		}
		id, err := s.newID("op-")
		if err != nil {
			return CreatedToken{}, err
		}
		newOp = &store.Operator{ID: id, Tenant: c.tenant, Name: req.Name, Role: req.Role, CreatedAt: now}
	} else if req.Role != "" {
		if err := checkRole(c, req.Role); err != nil {
			return CreatedToken{}, err
		}
	}
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		t := tok
		var op store.Operator
		if newOp != nil {
			op = *newOp
			if err := tx.Operators().Create(ctx, op); err != nil {
				return err
			}
			if err := s.audit(ctx, tx, c, c.tenant, "operator.create", "operator:"+op.ID, map[string]string{"name": op.Name, "role": string(op.Role)}); err != nil {
				return err
			}
		} else {
			var err error
			if op, err = tx.Operators().Get(ctx, c.tenant, req.Operator); err != nil {
				return err
			}
		}
		t.Operator, t.Role = op.ID, op.Role
		if req.Role != "" {
			if roleRank(req.Role) > roleRank(op.Role) {
				return errorf(http.StatusBadRequest, CodeInvalid, "token role exceeds the operator's role")
			}
			t.Role = req.Role
		}
		if err := tx.Tokens().Create(ctx, t); err != nil {
			return err
		}
		tok = t
		return s.audit(ctx, tx, c, c.tenant, "token.create", "token:"+t.ID,
			map[string]string{"operator": t.Operator, "role": string(t.Role), "name": t.Name, "expires_at": t.ExpiresAt.Format(time.RFC3339)})
	})
	if err != nil {
		return CreatedToken{}, err
	}
	return CreatedToken{Token: tok, Secret: sec.Plaintext}, nil
}

func (s *Server) listTokens(ctx context.Context, c *call, _ noBody) ([]store.Token, error) {
	var ts []store.Token
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		ts, err = tx.Tokens().List(ctx, c.tenant)
		return err
	})
	return nonNil(ts), err
}

func (s *Server) revokeToken(ctx context.Context, c *call, _ noBody) (noBody, error) {
	id := c.r.PathValue("id")
	return noBody{}, s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Tokens().Revoke(ctx, c.tenant, id, s.opt.Clock.Now().UTC()); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, c.tenant, "token.revoke", "token:"+id, nil)
	})
}

// --- audit

func (s *Server) listAudit(ctx context.Context, c *call, _ noBody) ([]store.AuditRecord, error) {
	q := c.r.URL.Query()
	after, limit := int64(0), 100
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return nil, errorf(http.StatusBadRequest, CodeBadRequest, "after must be a non-negative integer")
		}
		after = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return nil, errorf(http.StatusBadRequest, CodeBadRequest, "limit must be 1-1000")
		}
		limit = n
	}
	var rs []store.AuditRecord
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		rs, err = tx.Audit().Range(ctx, chain(c.tenant), after, limit)
		return err
	})
	return nonNil(rs), err
}

func (s *Server) verifyAudit(ctx context.Context, c *call, _ noBody) (audit.Report, error) {
	return audit.Verify(ctx, s.opt.Store, chain(c.tenant))
}

// chain is the audit chain of a scope.
func chain(t event.TenantID) event.TenantID {
	if t == "" {
		return PlatformChain
	}
	return t
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
