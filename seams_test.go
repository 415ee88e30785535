package main

import (
	"go/ast"
	"go/build"
	"go/constant"
	"go/parser"
	"go/token"
	"go/types"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// seamOwners are the types whose fields only their own file may touch:
// everyone else goes through their methods. A selector of one of their
// fields anywhere else is a seam broken.
var seamOwners = map[string]string{
	"spanRouter":  "span_router.go",
	"spanNode":    "span_router.go",
	"spanLink":    "span_router.go",
	"spanRelay":   "span_router.go",
	"spanCluster": "span_router.go",
	"spanConn":    "span_router.go",
	"quorumNode":  "quorum.go",
	"transTable":  "trans.go",
}

// seamSources are the package's non-test files, parsed once for every
// GOOS the test checks: most files are shared, and go/types only reads
// the trees.
type seamSources struct {
	fset  *token.FileSet
	names []string
	files map[string]*ast.File
}

func parseSeamSources(t *testing.T) *seamSources {
	t.Helper()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	src := &seamSources{fset: token.NewFileSet(), files: map[string]*ast.File{}}
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(src.fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		src.names = append(src.names, name)
		src.files[name] = f
	}
	return src
}

// seamPackage is the package's non-test files for one GOOS, type-checked
// with every import an empty package: the package's own types, which are
// all the seams are about, still check, and nothing outside it has to be
// built or even present.
type seamPackage struct {
	fset  *token.FileSet
	files []*ast.File
	pkg   *types.Package
	info  *types.Info
}

func loadSeamPackage(t *testing.T, src *seamSources, goos string) *seamPackage {
	t.Helper()
	ctx := build.Default
	ctx.GOOS = goos
	sp := &seamPackage{fset: src.fset, info: &types.Info{
		Selections: map[*ast.SelectorExpr]*types.Selection{},
		Defs:       map[*ast.Ident]types.Object{},
		Uses:       map[*ast.Ident]types.Object{},
	}}
	for _, name := range src.names {
		if ok, err := ctx.MatchFile(".", name); err != nil || !ok {
			continue
		}
		sp.files = append(sp.files, src.files[name])
	}
	if len(sp.files) < 20 {
		t.Fatalf("GOOS=%s: only %d files parsed; is the test running in the package directory?", goos, len(sp.files))
	}
	conf := types.Config{Importer: emptyImporter{}, Error: func(error) {}, GoVersion: "go1.26"}
	sp.pkg, _ = conf.Check("hammer2-leaf", sp.fset, sp.files, sp.info)
	return sp
}

// emptyImporter hands out an empty package for every import path, named
// as its last element (less a version suffix and a "go-" prefix), which is
// what the package is called in every import we have.
type emptyImporter struct{}

func (emptyImporter) Import(path string) (*types.Package, error) {
	name := filepath.Base(path)
	if len(name) >= 2 && name[0] == 'v' && strings.Trim(name[1:], "0123456789") == "" {
		name = filepath.Base(filepath.Dir(path))
	}
	name = strings.ReplaceAll(strings.TrimPrefix(name, "go-"), "-", "")
	p := types.NewPackage(path, name)
	p.MarkComplete()
	return p, nil
}

var _ types.Importer = emptyImporter{}

func (sp *seamPackage) fileOf(n ast.Node) string {
	return filepath.Base(sp.fset.Position(n.Pos()).Filename)
}

// fieldOwners maps each field of the seam types to its type's name.
func (sp *seamPackage) fieldOwners(t *testing.T) map[*types.Var]string {
	owners := map[*types.Var]string{}
	for name := range seamOwners {
		obj, ok := sp.pkg.Scope().Lookup(name).(*types.TypeName)
		if !ok {
			t.Fatalf("seam type %s is gone; update seamOwners", name)
		}
		st, ok := obj.Type().Underlying().(*types.Struct)
		if !ok {
			t.Fatalf("seam type %s is not a struct", name)
		}
		if got := sp.fileOf(identAt(sp, obj)); got != seamOwners[name] {
			t.Fatalf("seam type %s is declared in %s, not %s; update seamOwners", name, got, seamOwners[name])
		}
		for i := range st.NumFields() {
			owners[st.Field(i)] = name
		}
	}
	return owners
}

func identAt(sp *seamPackage, obj types.Object) ast.Node {
	for id, o := range sp.info.Defs {
		if o == obj {
			return id
		}
	}
	return &ast.Ident{NamePos: obj.Pos()}
}

// seamViolations lists every selector of a seam type's field outside its
// owner's file, as file:line: type.field.
func (sp *seamPackage) seamViolations(t *testing.T) []string {
	owners := sp.fieldOwners(t)
	var bad []string
	for _, f := range sp.files {
		file := sp.fileOf(f)
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			s := sp.info.Selections[sel]
			if s == nil || s.Kind() != types.FieldVal {
				return true
			}
			owner, ok := owners[s.Obj().(*types.Var)]
			if ok && seamOwners[owner] != file {
				bad = append(bad, sp.fset.Position(sel.Sel.Pos()).String()+": "+owner+"."+sel.Sel.Name)
			}
			return true
		})
	}
	return bad
}

// driverViolations lists every mention of the Leaf type in quorumDriver's
// methods: the driver knows the leaf only as its quorumHost.
func (sp *seamPackage) driverViolations(t *testing.T) []string {
	leaf, ok := sp.pkg.Scope().Lookup("Leaf").(*types.TypeName)
	if !ok {
		t.Fatal("type Leaf is gone; update the test")
	}
	mentionsLeaf := func(typ types.Type) bool {
		for typ != nil {
			switch u := typ.(type) {
			case *types.Pointer:
				typ = u.Elem()
				continue
			case *types.Named:
				return u.Obj() == leaf
			}
			return false
		}
		return false
	}
	var bad []string
	for _, f := range sp.files {
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Recv == nil || len(fd.Recv.List) != 1 {
				continue
			}
			if !isDriverRecv(sp, fd.Recv.List[0].Type) {
				continue
			}
			ast.Inspect(fd, func(n ast.Node) bool {
				id, ok := n.(*ast.Ident)
				if !ok {
					return true
				}
				obj := sp.info.Uses[id]
				if obj == nil {
					obj = sp.info.Defs[id]
				}
				if obj != nil && (obj == leaf || mentionsLeaf(obj.Type())) {
					bad = append(bad, sp.fset.Position(id.Pos()).String()+": quorumDriver."+fd.Name.Name+" uses "+id.Name+" ("+obj.Type().String()+")")
				}
				return true
			})
		}
	}
	if obj, ok := sp.pkg.Scope().Lookup("quorumDriver").(*types.TypeName); ok {
		st := obj.Type().Underlying().(*types.Struct)
		for i := range st.NumFields() {
			if mentionsLeaf(st.Field(i).Type()) {
				bad = append(bad, "quorumDriver."+st.Field(i).Name()+" is a "+st.Field(i).Type().String())
			}
		}
	} else {
		t.Fatal("type quorumDriver is gone; update the test")
	}
	return bad
}

// isDriverRecv reports whether a method's receiver type is quorumDriver
// or a pointer to it.
func isDriverRecv(sp *seamPackage, recv ast.Expr) bool {
	if star, ok := recv.(*ast.StarExpr); ok {
		recv = star.X
	}
	id, ok := recv.(*ast.Ident)
	if !ok {
		return false
	}
	obj, ok := sp.info.Uses[id].(*types.TypeName)
	return ok && obj.Pkg() == sp.pkg && obj.Name() == "quorumDriver"
}

// wireConstViolations lists Cmd* and Err* wire constants declared outside
// cmds.go, or without a name in its tables.
func (sp *seamPackage) wireConstViolations() []string {
	var bad []string
	scope := sp.pkg.Scope()
	for _, name := range scope.Names() {
		c, ok := scope.Lookup(name).(*types.Const)
		if !ok || !(strings.HasPrefix(name, "Cmd") || strings.HasPrefix(name, "Err")) || len(name) < 4 || !isUpper(name[3]) {
			continue
		}
		where := filepath.Base(sp.fset.Position(c.Pos()).Filename)
		if where != "cmds.go" {
			bad = append(bad, name+" is declared in "+where+", not cmds.go")
			continue
		}
		v, exact := constant.Uint64Val(c.Val())
		if !exact || v > 0xFFFFFFFF {
			bad = append(bad, name+" is not a uint32 value")
			continue
		}
		var named bool
		if strings.HasPrefix(name, "Cmd") {
			_, named = cmdNames[uint32(v)]
		} else {
			_, named = errNames[uint32(v)]
		}
		if !named {
			bad = append(bad, name+" has no name in cmds.go's tables")
		}
	}
	return bad
}

func isUpper(b byte) bool { return 'A' <= b && b <= 'Z' }

// clockFiles are the quorum and lease code: it reads time only through its
// clock (clock.go), so that the CAC scripts and the fault campaign can move
// each master's.
var clockFiles = []string{"cac.go", "cac_lease.go", "cac_store.go", "quorum.go", "quorum_driver.go", "quorum_fsm.go",
	"quorum_join.go", "quorum_link.go", "quorum_store.go"}

// clockViolations lists every read of the system's clock (time.Now,
// time.Since, time.Until) in clockFiles.
func (sp *seamPackage) clockViolations() []string {
	var bad []string
	for _, f := range sp.files {
		if !slices.Contains(clockFiles, sp.fileOf(f)) {
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); ok && x.Name == "time" && slices.Contains([]string{"Now", "Since", "Until"}, sel.Sel.Name) {
				bad = append(bad, sp.fset.Position(sel.Pos()).String()+": time."+sel.Sel.Name+" outside the clock seam")
			}
			return true
		})
	}
	return bad
}

// TestSeams keeps the seams of the flat package: the span router, the
// quorum node and the transaction table are used through their methods
// only; the quorum driver does not know the Leaf; every wire command and
// error code is in cmds.go's table; the quorum and lease code reads time
// only through its clock. It checks the files of every GOOS the
// daemon builds for.
func TestSeams(t *testing.T) {
	// Not parallel: its type checks are, in the sequential phase
	// (schedule_test.go).
	src := parseSeamSources(t)
	for _, goos := range []string{"linux", "dragonfly", "freebsd"} {
		t.Run(goos, func(t *testing.T) {
			t.Parallel()
			sp := loadSeamPackage(t, src, goos)
			var bad []string
			bad = append(bad, sp.seamViolations(t)...)
			bad = append(bad, sp.driverViolations(t)...)
			bad = append(bad, sp.wireConstViolations()...)
			bad = append(bad, sp.clockViolations()...)
			slices.Sort(bad)
			for _, b := range slices.Compact(bad) {
				t.Error(b)
			}
		})
	}
}
