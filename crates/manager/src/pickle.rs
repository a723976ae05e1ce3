//! A small pickle codec: reads protocols 2–5 (and the text opcodes of 0–1 that carry
//! plain data), writes protocol 4 without memo or frames. Objects it does not know (class
//! instances, sets, functions' references) are kept as a tree of their opcodes' meaning
//! (global, reduce, new-object, build), which it writes back so that Python rebuilds the
//! same object.
//!
//! Reading is bounded: the tree a pickle expands to (shared references copied) is at most
//! [`EXPANSION`] nodes per input byte, nested at most [`MAX_DEPTH`] deep, and nothing is
//! allocated from a length the input claims before the bytes are there.

use std::{collections::HashMap, fmt};

/// A pickled object, as a tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pickle {
    None,
    Bool(bool),
    Int(i64),
    /// An int beyond 64 bits: little-endian two's complement (as `LONG1`/`LONG4`).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    ByteArray(Vec<u8>),
    List(Vec<Pickle>),
    Tuple(Vec<Pickle>),
    Dict(Vec<(Pickle, Pickle)>),
    Set(Vec<Pickle>),
    FrozenSet(Vec<Pickle>),
    /// `module.name`, a class or function by reference.
    Global(String, String),
    /// `callable(*args)`.
    Reduce(Box<Pickle>, Box<Pickle>),
    /// `cls.__new__(cls, *args)`.
    NewObj(Box<Pickle>, Box<Pickle>),
    /// `cls.__new__(cls, *args, **kwargs)`.
    NewObjEx(Box<Pickle>, Box<Pickle>, Box<Pickle>),
    /// `obj.__setstate__(state)` (or its `__dict__` updated).
    Build(Box<Pickle>, Box<Pickle>),
    /// Items appended to an object that is not a plain list.
    Appended(Box<Pickle>, Vec<Pickle>),
    /// Items set on an object that is not a plain dict.
    ItemsSet(Box<Pickle>, Vec<(Pickle, Pickle)>),
    /// Items added to an object that is not a plain set.
    Added(Box<Pickle>, Vec<Pickle>),
}

impl Pickle {
    /// An instance of `module.name` built from `args` (how exceptions pickle).
    pub(crate) fn call(module: &str, name: &str, args: Vec<Pickle>) -> Pickle {
        Pickle::Reduce(
            Box::new(Pickle::Global(module.into(), name.into())),
            Box::new(Pickle::Tuple(args)),
        )
    }
}

/// A pickle that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PickleError(pub(crate) String);

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad pickle: {}", self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError(msg.into()))
}

/// How many tree nodes (and bytes of strings) a pickle may expand to, per input byte
/// (shared references are copied into the tree).
pub(crate) const EXPANSION: usize = 16;
/// How deep a pickle may nest.
pub(crate) const MAX_DEPTH: usize = 256;

/// One object while reading: containers refer to other slots, so that a memoized object
/// changed later (`APPENDS`, `BUILD`) is seen changed by every reference to it.
#[derive(Debug, Clone)]
enum Node {
    Leaf(Pickle),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
    FrozenSet(Vec<usize>),
    Reduce(usize, usize),
    NewObj(usize, usize),
    NewObjEx(usize, usize, usize),
    Build(usize, usize),
    Appended(usize, Vec<usize>),
    ItemsSet(usize, Vec<(usize, usize)>),
    Added(usize, Vec<usize>),
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Obj(usize),
    Mark,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Slot>,
    memo: HashMap<u64, usize>,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return err("truncated");
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len_u32(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        usize::try_from(u64::from_le_bytes(self.le()?)).or_else(|_| err("length beyond memory"))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.buf[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return err("truncated line");
        };
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).or_else(|_| err("a text opcode that is not UTF-8"))
    }

    fn add(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn push(&mut self, n: Node) {
        let i = self.add(n);
        self.stack.push(Slot::Obj(i));
    }

    fn leaf(&mut self, p: Pickle) {
        self.push(Node::Leaf(p));
    }

    fn pop(&mut self) -> Result<usize, PickleError> {
        match self.stack.pop() {
            Some(Slot::Obj(i)) => Ok(i),
            Some(Slot::Mark) => err("a mark where an object was expected"),
            None => err("stack underflow"),
        }
    }

    fn top(&self) -> Result<usize, PickleError> {
        match self.stack.last() {
            Some(Slot::Obj(i)) => Ok(*i),
            _ => err("no object on the stack"),
        }
    }

    /// The objects above the topmost mark, the mark removed.
    fn pop_mark(&mut self) -> Result<Vec<usize>, PickleError> {
        let Some(m) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            return err("no mark");
        };
        let items = self.stack[m + 1..]
            .iter()
            .filter_map(|s| match s {
                Slot::Obj(i) => Some(*i),
                Slot::Mark => None,
            })
            .collect();
        self.stack.truncate(m);
        Ok(items)
    }

    fn pairs(items: &[usize]) -> Result<Vec<(usize, usize)>, PickleError> {
        if items.len() % 2 != 0 {
            return err("an odd number of items for a dict");
        }
        Ok(items.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    fn append(&mut self, target: usize, items: Vec<usize>) {
        match &mut self.nodes[target] {
            Node::List(v) => v.extend(items),
            Node::Appended(_, v) => v.extend(items),
            _ => self.wrap(target, |inner| Node::Appended(inner, items)),
        }
    }

    fn set_items(&mut self, target: usize, items: Vec<(usize, usize)>) {
        match &mut self.nodes[target] {
            Node::Dict(v) => v.extend(items),
            Node::ItemsSet(_, v) => v.extend(items),
            _ => self.wrap(target, |inner| Node::ItemsSet(inner, items)),
        }
    }

    fn add_items(&mut self, target: usize, items: Vec<usize>) {
        match &mut self.nodes[target] {
            Node::Set(v) => v.extend(items),
            Node::Added(_, v) => v.extend(items),
            _ => self.wrap(target, |inner| Node::Added(inner, items)),
        }
    }

    /// Replaces slot `i` by `f(a slot holding what `i` held)`: every reference to `i`
    /// sees the change.
    fn wrap(&mut self, i: usize, f: impl FnOnce(usize) -> Node) {
        let old = std::mem::replace(&mut self.nodes[i], Node::Leaf(Pickle::None));
        let moved = self.add(old);
        self.nodes[i] = f(moved);
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let i = self.top()?;
        self.memo.insert(key, i);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        let Some(&i) = self.memo.get(&key) else {
            return err(format!("memo {key} is not set"));
        };
        self.stack.push(Slot::Obj(i));
        Ok(())
    }

    fn int_text(&mut self, long: bool) -> Result<(), PickleError> {
        let line = self.line()?;
        let t = if long {
            line.strip_suffix('L').unwrap_or(line)
        } else {
            line
        };
        match t {
            "00" if !long => self.leaf(Pickle::Bool(false)),
            "01" if !long => self.leaf(Pickle::Bool(true)),
            _ => match t.parse::<i64>() {
                Ok(v) => self.leaf(Pickle::Int(v)),
                Err(_) => return err(format!("an int this codec does not read: {t:.40}")),
            },
        }
        Ok(())
    }

    fn long_bytes(&mut self, n: usize) -> Result<(), PickleError> {
        let b = self.take(n)?;
        self.leaf(long_from_le(b));
        Ok(())
    }

    fn string(&mut self, b: &[u8]) -> Result<(), PickleError> {
        match std::str::from_utf8(b) {
            Ok(s) => {
                self.leaf(Pickle::Str(s.to_owned()));
                Ok(())
            }
            Err(_) => err("a string that is not UTF-8"),
        }
    }

    fn run(&mut self) -> Result<usize, PickleError> {
        loop {
            let op = self.u8()?;
            match op {
                b'\x80' => {
                    let v = self.u8()?;
                    if v > 5 {
                        return err(format!("protocol {v}"));
                    }
                }
                b'\x95' => {
                    self.take(8)?;
                }
                b'.' => {
                    let top = self.pop()?;
                    return Ok(top);
                }
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    self.stack
                        .pop()
                        .map_or_else(|| err("stack underflow"), |_| Ok(()))?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(Slot::Obj(t));
                }
                b'N' => self.leaf(Pickle::None),
                b'\x88' => self.leaf(Pickle::Bool(true)),
                b'\x89' => self.leaf(Pickle::Bool(false)),
                b'I' => self.int_text(false)?,
                b'L' => self.int_text(true)?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.leaf(Pickle::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.leaf(Pickle::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.leaf(Pickle::Int(v.into()));
                }
                b'\x8a' => {
                    let n = self.u8()? as usize;
                    self.long_bytes(n)?;
                }
                b'\x8b' => {
                    let n = i32::from_le_bytes(self.le()?);
                    let Ok(n) = usize::try_from(n) else {
                        return err("a negative length");
                    };
                    self.long_bytes(n)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.leaf(Pickle::Float(v));
                }
                b'F' => {
                    let line = self.line()?;
                    match line.parse::<f64>() {
                        Ok(v) => self.leaf(Pickle::Float(v)),
                        Err(_) => return err("a float that does not parse"),
                    }
                }
                b'\x8c' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.string(b)?;
                }
                b'X' => {
                    let n = self.len_u32()?;
                    let b = self.take(n)?;
                    self.string(b)?;
                }
                b'\x8d' => {
                    let n = self.len_u64()?;
                    let b = self.take(n)?;
                    self.string(b)?;
                }
                // Python 2 strings: Python 3 reads them as str (ASCII).
                b'U' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.string(b)?;
                }
                b'T' => {
                    let n = self.len_u32()?;
                    let b = self.take(n)?;
                    self.string(b)?;
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.leaf(Pickle::Bytes(b));
                }
                b'B' => {
                    let n = self.len_u32()?;
                    let b = self.take(n)?.to_vec();
                    self.leaf(Pickle::Bytes(b));
                }
                b'\x8e' => {
                    let n = self.len_u64()?;
                    let b = self.take(n)?.to_vec();
                    self.leaf(Pickle::Bytes(b));
                }
                b'\x96' => {
                    let n = self.len_u64()?;
                    let b = self.take(n)?.to_vec();
                    self.leaf(Pickle::ByteArray(b));
                }
                b']' => self.push(Node::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, vec![v]);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, items);
                }
                b')' => self.push(Node::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                b'\x85' | b'\x86' | b'\x87' => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return err("stack underflow");
                    }
                    let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = Self::pairs(&items)?;
                    self.push(Node::Dict(pairs));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![(k, v)]);
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = Self::pairs(&items)?;
                    let d = self.top()?;
                    self.set_items(d, pairs);
                }
                b'\x8f' => self.push(Node::Set(Vec::new())),
                b'\x90' => {
                    let items = self.pop_mark()?;
                    let s = self.top()?;
                    self.add_items(s, items);
                }
                b'\x91' => {
                    let items = self.pop_mark()?;
                    self.push(Node::FrozenSet(items));
                }
                b'c' => {
                    let module = self.line()?.to_owned();
                    let name = self.line()?.to_owned();
                    self.leaf(Pickle::Global(module, name));
                }
                b'\x93' => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.nodes[module], &self.nodes[name]) {
                        (Node::Leaf(Pickle::Str(m)), Node::Leaf(Pickle::Str(n))) => {
                            let g = Pickle::Global(m.clone(), n.clone());
                            self.leaf(g);
                        }
                        _ => return err("STACK_GLOBAL without two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    self.push(Node::Reduce(f, args));
                }
                b'\x81' => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(Node::NewObj(cls, args));
                }
                b'\x92' => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(Node::NewObjEx(cls, args, kwargs));
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    self.wrap(obj, |inner| Node::Build(inner, state));
                }
                b'p' => {
                    let line = self.line()?;
                    let Ok(k) = line.parse::<u64>() else {
                        return err("a PUT key that is not a number");
                    };
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(k.into())?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_put(k.into())?;
                }
                b'\x94' => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let line = self.line()?;
                    let Ok(k) = line.parse::<u64>() else {
                        return err("a GET key that is not a number");
                    };
                    self.memo_get(k)?;
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(k.into())?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_get(k.into())?;
                }
                other => return err(format!("opcode 0x{other:02x} is not supported")),
            }
        }
    }

    /// The tree under slot `i`, within the node budget and depth.
    fn tree(&self, i: usize, depth: usize, budget: &mut usize) -> Result<Pickle, PickleError> {
        if depth > MAX_DEPTH {
            return err("nested too deep (or a cycle)");
        }
        if *budget == 0 {
            return err("expands beyond its limit (shared references)");
        }
        *budget -= 1;
        let d = depth + 1;
        let one = |j: usize, budget: &mut usize| self.tree(j, d, budget);
        let many = |v: &[usize], budget: &mut usize| {
            v.iter()
                .map(|&j| self.tree(j, d, budget))
                .collect::<Result<Vec<_>, _>>()
        };
        let pairs = |v: &[(usize, usize)], budget: &mut usize| {
            v.iter()
                .map(|&(k, x)| Ok((self.tree(k, d, budget)?, self.tree(x, d, budget)?)))
                .collect::<Result<Vec<_>, PickleError>>()
        };
        Ok(match &self.nodes[i] {
            Node::Leaf(p) => {
                let size = match p {
                    Pickle::Str(s) => s.len(),
                    Pickle::Bytes(b) | Pickle::ByteArray(b) | Pickle::BigInt(b) => b.len(),
                    _ => 0,
                };
                // Leaves are copied too: a shared string counts by its length.
                *budget = budget.saturating_sub(size);
                p.clone()
            }
            Node::List(v) => Pickle::List(many(v, budget)?),
            Node::Tuple(v) => Pickle::Tuple(many(v, budget)?),
            Node::Dict(v) => Pickle::Dict(pairs(v, budget)?),
            Node::Set(v) => Pickle::Set(many(v, budget)?),
            Node::FrozenSet(v) => Pickle::FrozenSet(many(v, budget)?),
            Node::Reduce(f, a) => {
                Pickle::Reduce(Box::new(one(*f, budget)?), Box::new(one(*a, budget)?))
            }
            Node::NewObj(c, a) => {
                Pickle::NewObj(Box::new(one(*c, budget)?), Box::new(one(*a, budget)?))
            }
            Node::NewObjEx(c, a, k) => Pickle::NewObjEx(
                Box::new(one(*c, budget)?),
                Box::new(one(*a, budget)?),
                Box::new(one(*k, budget)?),
            ),
            Node::Build(o, s) => {
                Pickle::Build(Box::new(one(*o, budget)?), Box::new(one(*s, budget)?))
            }
            Node::Appended(o, v) => Pickle::Appended(Box::new(one(*o, budget)?), many(v, budget)?),
            Node::ItemsSet(o, v) => Pickle::ItemsSet(Box::new(one(*o, budget)?), pairs(v, budget)?),
            Node::Added(o, v) => Pickle::Added(Box::new(one(*o, budget)?), many(v, budget)?),
        })
    }
}

/// An int from little-endian two's complement bytes.
fn long_from_le(b: &[u8]) -> Pickle {
    if b.is_empty() {
        return Pickle::Int(0);
    }
    if b.len() <= 8 {
        let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
        let mut a = [fill; 8];
        a[..b.len()].copy_from_slice(b);
        return Pickle::Int(i64::from_le_bytes(a));
    }
    Pickle::BigInt(b.to_vec())
}

/// Reads one pickle (the whole of `buf`).
pub(crate) fn loads(buf: &[u8]) -> Result<Pickle, PickleError> {
    let mut r = Reader {
        buf,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    let root = r.run()?;
    let mut budget = buf.len().saturating_mul(EXPANSION).max(64);
    r.tree(root, 0, &mut budget)
}

/// Writes `p` as a protocol 4 pickle.
pub(crate) fn dumps(p: &Pickle) -> Vec<u8> {
    let mut out = vec![0x80, 4];
    write(p, &mut out);
    out.push(b'.');
    out
}

fn write_len_prefixed(out: &mut Vec<u8>, b: &[u8], short: u8, long: u8, long8: u8) {
    if let Ok(n) = u8::try_from(b.len()) {
        out.push(short);
        out.push(n);
    } else if let Ok(n) = u32::try_from(b.len()) {
        out.push(long);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(long8);
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(b);
}

fn write_items(items: &[Pickle], out: &mut Vec<u8>, op: u8) {
    for chunk in items.chunks(1000) {
        out.push(b'(');
        for x in chunk {
            write(x, out);
        }
        out.push(op);
    }
}

fn write_pairs(items: &[(Pickle, Pickle)], out: &mut Vec<u8>) {
    for chunk in items.chunks(1000) {
        out.push(b'(');
        for (k, v) in chunk {
            write(k, out);
            write(v, out);
        }
        out.push(b'u');
    }
}

fn write(p: &Pickle, out: &mut Vec<u8>) {
    match p {
        Pickle::None => out.push(b'N'),
        Pickle::Bool(true) => out.push(0x88),
        Pickle::Bool(false) => out.push(0x89),
        Pickle::Int(v) => {
            if let Ok(b) = u8::try_from(*v) {
                out.extend_from_slice(&[b'K', b]);
            } else if let Ok(b) = u16::try_from(*v) {
                out.push(b'M');
                out.extend_from_slice(&b.to_le_bytes());
            } else if let Ok(b) = i32::try_from(*v) {
                out.push(b'J');
                out.extend_from_slice(&b.to_le_bytes());
            } else {
                out.extend_from_slice(&[0x8a, 8]);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Pickle::BigInt(b) => {
            if let Ok(n) = u8::try_from(b.len()) {
                out.extend_from_slice(&[0x8a, n]);
            } else {
                out.push(0x8b);
                out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
            }
            out.extend_from_slice(b);
        }
        Pickle::Float(x) => {
            out.push(b'G');
            out.extend_from_slice(&x.to_be_bytes());
        }
        Pickle::Str(s) => write_len_prefixed(out, s.as_bytes(), 0x8c, b'X', 0x8d),
        Pickle::Bytes(b) => write_len_prefixed(out, b, b'C', b'B', 0x8e),
        Pickle::ByteArray(b) => {
            write(
                &Pickle::call("builtins", "bytearray", vec![Pickle::Bytes(b.clone())]),
                out,
            );
        }
        Pickle::List(items) => {
            out.push(b']');
            write_items(items, out, b'e');
        }
        Pickle::Tuple(items) => match items.len() {
            0 => out.push(b')'),
            1..=3 => {
                for x in items {
                    write(x, out);
                }
                out.push(0x84 + items.len() as u8);
            }
            _ => {
                out.push(b'(');
                for x in items {
                    write(x, out);
                }
                out.push(b't');
            }
        },
        Pickle::Dict(items) => {
            out.push(b'}');
            write_pairs(items, out);
        }
        Pickle::Set(items) => {
            out.push(0x8f);
            write_items(items, out, 0x90);
        }
        Pickle::FrozenSet(items) => {
            out.push(b'(');
            for x in items {
                write(x, out);
            }
            out.push(0x91);
        }
        Pickle::Global(m, n) => {
            write(&Pickle::Str(m.clone()), out);
            write(&Pickle::Str(n.clone()), out);
            out.push(0x93);
        }
        Pickle::Reduce(f, a) => {
            write(f, out);
            write(a, out);
            out.push(b'R');
        }
        Pickle::NewObj(c, a) => {
            write(c, out);
            write(a, out);
            out.push(0x81);
        }
        Pickle::NewObjEx(c, a, k) => {
            write(c, out);
            write(a, out);
            write(k, out);
            out.push(0x92);
        }
        Pickle::Build(o, s) => {
            write(o, out);
            write(s, out);
            out.push(b'b');
        }
        Pickle::Appended(o, items) => {
            write(o, out);
            write_items(items, out, b'e');
        }
        Pickle::ItemsSet(o, items) => {
            write(o, out);
            write_pairs(items, out);
        }
        Pickle::Added(o, items) => {
            write(o, out);
            write_items(items, out, 0x90);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf() -> impl Strategy<Value = Pickle> {
        prop_oneof![
            Just(Pickle::None),
            any::<bool>().prop_map(Pickle::Bool),
            any::<i64>().prop_map(Pickle::Int),
            any::<f64>()
                .prop_filter("NaN differs from itself", |x| !x.is_nan())
                .prop_map(Pickle::Float),
            ".{0,300}".prop_map(Pickle::Str),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Pickle::Bytes),
            proptest::collection::vec(any::<u8>(), 9..20).prop_map(Pickle::BigInt),
            ("[a-z_]{1,10}", "[A-Za-z_]{1,10}").prop_map(|(m, n)| Pickle::Global(m, n)),
        ]
    }

    fn tree() -> impl Strategy<Value = Pickle> {
        leaf().prop_recursive(6, 200, 8, |inner| {
            let v = || proptest::collection::vec(inner.clone(), 0..8);
            prop_oneof![
                v().prop_map(Pickle::List),
                v().prop_map(Pickle::Tuple),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..6)
                    .prop_map(Pickle::Dict),
                v().prop_map(Pickle::Set),
                v().prop_map(Pickle::FrozenSet),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Pickle::Reduce(Box::new(a), Box::new(b))),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Pickle::NewObj(Box::new(a), Box::new(b))),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Pickle::Build(Box::new(a), Box::new(b))),
                (inner.clone(), v()).prop_map(|(a, b)| Pickle::Appended(Box::new(a), b)),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(p in tree()) {
            // Appending to a list written as a list is the longer list: normalise first.
            let once = loads(&dumps(&p)).unwrap();
            let twice = loads(&dumps(&once)).unwrap();
            prop_assert_eq!(&once, &twice);
        }

        #[test]
        fn plain_values_round_trip_exactly(p in leaf()) {
            prop_assert_eq!(loads(&dumps(&p)).unwrap(), p);
        }

        #[test]
        fn fuzzed_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = loads(&b);
        }

        #[test]
        fn mutated_pickles_never_panic(p in tree(), at in any::<usize>(), byte in any::<u8>()) {
            let mut b = dumps(&p);
            let i = at % b.len();
            b[i] = byte;
            let _ = loads(&b);
            b.truncate(i);
            let _ = loads(&b);
        }
    }

    #[test]
    fn python_pickles_read() {
        // pickle.dumps({'a': [1, 2.5, 'x', b'y', None, True, (3,)], 'b': 2**70}, 4)
        let memo_shared: &[u8] = b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00]\x94(]\x94K\x01a\x8c\x01x\x94h\x01h\x02e.";
        // [[1], 'x', [1] (the same list), 'x']
        let p = loads(memo_shared).unwrap();
        assert_eq!(
            p,
            Pickle::List(vec![
                Pickle::List(vec![Pickle::Int(1)]),
                Pickle::Str("x".into()),
                Pickle::List(vec![Pickle::Int(1)]),
                Pickle::Str("x".into()),
            ])
        );
    }

    #[test]
    fn billion_laughs_is_refused() {
        // l0 = [1]; l1 = [l0, l0]; … each level doubles the tree.
        let mut b = vec![0x80, 4, b']', 0x94, b'K', 1, b'a'];
        for i in 0..40u32 {
            b.extend_from_slice(&[b']', 0x94, b'(', b'j']);
            b.extend_from_slice(&i.to_le_bytes());
            b.push(b'j');
            b.extend_from_slice(&i.to_le_bytes());
            b.push(b'e');
        }
        b.push(b'.');
        assert!(loads(&b).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut b = vec![0x80, 4];
        b.extend(std::iter::repeat_n(b'(', 10_000));
        b.push(b'.');
        assert!(loads(&b).is_err());
        let mut b = vec![0x80, 4];
        b.extend(std::iter::repeat_n(b']', 10_000));
        b.extend(std::iter::repeat_n(b'a', 9_999));
        b.push(b'.');
        assert!(loads(&b).is_err());
    }
}
