// Command render renders a Helm chart as `helm template` does, for machines that cannot
// install helm (the CI machines reach only crates.io, PyPI, Debian and npm). It uses the
// engine helm uses: Go's text/template with sprig's functions, plus helm's own include, tpl,
// toYaml, fromYaml and required; values files merge over the chart's values.yaml.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go run deploy/helm/render.go \
//	    [-f values.yaml]... [-release NAME] [-namespace NS] deploy/helm/wasmserve
//
// (Debian: golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev.)
// With helm at hand, `helm template` and `helm lint` check the same chart.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	sprig "github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

func readYAML(path string) map[string]interface{} {
	text, err := os.ReadFile(path)
	check(err)
	out := map[string]interface{}{}
	check(yaml.Unmarshal(text, &out))
	return out
}

// merge lays `over` on `base`, maps key by key, as helm merges values files.
func merge(base, over map[string]interface{}) map[string]interface{} {
	for k, v := range over {
		if sub, ok := v.(map[string]interface{}); ok {
			if b, ok := base[k].(map[string]interface{}); ok {
				base[k] = merge(b, sub)
				continue
			}
		}
		base[k] = v
	}
	return base
}

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func main() {
	var files valueFiles
	flag.Var(&files, "f", "a values file (repeatable; later ones win)")
	release := flag.String("release", "wasmserve", "release name")
	namespace := flag.String("namespace", "wasmserve", "release namespace")
	flag.Parse()
	chart := flag.Arg(0)
	meta := readYAML(filepath.Join(chart, "Chart.yaml"))
	values := readYAML(filepath.Join(chart, "values.yaml"))
	for _, f := range files {
		values = merge(values, readYAML(f))
	}
	data := map[string]interface{}{
		"Values":  values,
		"Release": map[string]interface{}{"Name": *release, "Namespace": *namespace, "Service": "Helm"},
		"Chart": map[string]interface{}{
			"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"],
		},
		"Template": map[string]interface{}{"BasePath": filepath.Join(filepath.Base(chart), "templates")},
	}

	var t *template.Template
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env") // helm removes these two
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		out := map[string]interface{}{}
		_ = yaml.Unmarshal([]byte(s), &out)
		return out
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		inner, err := t.Clone()
		if err != nil {
			return "", err
		}
		inner, err = inner.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = inner.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["required"] = func(message string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", message)
		}
		return v, nil
	}
	t = template.New("chart").Funcs(funcs).Option("missingkey=zero")

	paths, err := filepath.Glob(filepath.Join(chart, "templates", "*"))
	check(err)
	sort.Strings(paths)
	for _, path := range paths {
		text, err := os.ReadFile(path)
		check(err)
		name := filepath.Join(filepath.Base(chart), "templates", filepath.Base(path))
		_, err = t.New(name).Parse(string(text))
		check(err)
	}
	for _, path := range paths {
		base := filepath.Base(path)
		if strings.HasPrefix(base, "_") {
			continue
		}
		name := filepath.Join(filepath.Base(chart), "templates", base)
		var buf bytes.Buffer
		check(t.ExecuteTemplate(&buf, name, data))
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(out) == "" || !strings.HasSuffix(base, ".yaml") {
			continue // empty (disabled) or not a manifest (NOTES.txt): rendered, not printed
		}
		fmt.Printf("---\n# Source: %s\n%s\n", name, strings.TrimSpace(out))
	}
}
