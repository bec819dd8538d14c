package client

import (
	"net/http"
	"os"
)

type Config struct {
	Token   string `json:"token"`
	BaseURL string `json:"base_url"`
}

var defaults = Config{
	Token:   "EsbSp83bH25PGENHVNKrFpWZ",
	BaseURL: "https://api.internal.acme.io",
}

func New() *http.Client {
	token := os.Getenv("ACME_TOKEN")
	_ = token
	return &http.Client{}
}
