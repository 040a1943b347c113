"""Module import graph of src/ from `use crate::`/`use super::`/`super::x::`/`crate::x::` paths
(test modules excluded), at file granularity; reports cycles (SCCs > 1) among sibling modules."""
import os, re, sys, itertools
root = sys.argv[1] if len(sys.argv) > 1 else 'src'
mods = {}
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs'): continue
        p = os.path.join(dp, f)
        rel = os.path.relpath(p, root)[:-3].split(os.sep)
        if rel[-1] in ('mod',): rel = rel[:-1]
        if rel in (['lib'], ['main']): rel = []
        mods[tuple(rel)] = p
def strip_tests(s):
    i = s.find('#[cfg(test)]\nmod tests')
    return s if i < 0 else s[:i]
def resolve(cur, path):
    segs = path.split('::')
    if segs[0] == 'crate': base = []; segs = segs[1:]
    elif segs[0] == 'super':
        base = list(cur)
        while segs and segs[0] == 'super': base = base[:-1]; segs = segs[1:]
    elif segs[0] == 'self': base = list(cur); segs = segs[1:]
    else: return None
    m = list(base)
    for s in segs:
        if tuple(m + [s]) in mods: m.append(s)
        else: break
    return tuple(m)
edges = {}
for m, p in mods.items():
    if m == (): continue  # lib.rs / main.rs: the roots
    s = strip_tests(open(p).read())
    s = re.sub(r'//[^\n]*', '', s)
    deps = set()
    for mt in re.finditer(r'\b((?:crate|super|self)(?:::\w+)+)', s):
        t = resolve(m, mt.group(1))
        if t is not None and t != m: deps.add(t)
    # `use x::{a, b::c}` groups
    for mt in re.finditer(r'\b((?:crate|super|self)(?:::\w+)*)::\{([^}]*)\}', s):
        for item in mt.group(2).split(','):
            item = item.strip().split(' as ')[0]
            if not item: continue
            t = resolve(m, mt.group(1) + '::' + item)
            if t is not None and t != m: deps.add(t)
    edges[m] = deps
def sibling_edges():
    """Edge a->b between the two distinct children of their deepest common ancestor (a module
    importing its own ancestor's items, e.g. `super::Error`, is reported separately)."""
    out = {}
    up = []
    for a, ds in edges.items():
        for b in ds:
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]: k += 1
            if k == len(b): up.append((a, b)); continue  # b is an ancestor of a
            if k == len(a): continue  # a uses its own child
            x, y = a[:k+1], b[:k+1]
            out.setdefault(x, set()).add(y)
    return out, up
g, up = sibling_edges()
# Tarjan SCC
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in g.get(v, ()):
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in list(g):
    if v not in idx: sc(v)
name = lambda t: '::'.join(t) or 'crate'
print(f'{len(edges)} modules, {sum(len(v) for v in g.values())} sibling edges')
for comp in sccs:
    print('CYCLE:', ', '.join(sorted(map(name, comp))))
    for a in comp:
        for b in g.get(a, ()):
            if b in comp: print('   ', name(a), '->', name(b))
if not sccs: print('no cycle among sibling modules')
if '-v' in sys.argv:
    print('child -> ancestor imports (items defined in a parent mod.rs):')
    for a, b in sorted(up): print('   ', name(a), '->', name(b))
