package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// tlsMaterial is what --tls-cert/--tls-key/--tls-ca turn into.
type tlsMaterial struct {
	server     *tls.Config // HTTPS and WSS: client certificates verified when given
	raftServer *tls.Config // raft: client certificates required
	client     *tls.Config // calls to other nodes: our certificate, peers verified
	mutual     bool
}

func loadTLS(certFile, keyFile, caFile string) (*tlsMaterial, error) {
	if certFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	m := &tlsMaterial{
		server: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		client: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	if caFile == "" {
		return m, nil
	}
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	m.mutual = true
	m.server.ClientCAs, m.server.ClientAuth = pool, tls.VerifyClientCertIfGiven
	m.client.RootCAs = pool
	m.raftServer = &tls.Config{
		Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
	}
	return m, nil
}

func loadPool(caFile string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("--tls-ca: no PEM certificate in " + caFile)
	}
	return pool, nil
}
