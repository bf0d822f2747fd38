//! Every handler shape the macros accept.
#![deny(warnings)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use raftkit::client::Local;
use raftkit::prelude::*;

fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    x: i64,
    y: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Shape {
    Dot(Point),
    Line { from: Point, to: Point },
    Nothing,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum Rejected {
    TooMany { limit: usize },
}

// A private state machine with private argument types works too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Secret(u8);

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "shapes-v1", on_error = "halt")]
pub struct Canvas {
    shapes: Vec<Shape>,
    tags: HashMap<String, HashSet<u32>>,
    secret: Option<Secret>,
}

#[raftkit::state_machine]
impl Canvas {
    /// No arguments, no return value.
    #[write]
    fn clear(&mut self) {
        self.shapes.clear();
    }

    /// Many arguments of user types, a typed error.
    #[write(on_error = "skip")]
    fn draw(&mut self, shape: Shape, copies: u8, limit: usize) -> Result<usize, Rejected> {
        if self.shapes.len() + usize::from(copies) > limit {
            return Err(Rejected::TooMany { limit });
        }
        for _ in 0..copies {
            self.shapes.push(shape.clone());
        }
        Ok(self.shapes.len())
    }

    /// `mut` argument bindings, maps and sets.
    #[write(tag = 10)]
    fn tag(&mut self, mut name: String, ids: Vec<u32>) -> HashMap<String, HashSet<u32>> {
        name.make_ascii_lowercase();
        self.tags.entry(name).or_default().extend(ids);
        self.tags.clone()
    }

    /// `Self` in argument and return types, a raw identifier argument.
    #[write]
    fn replace(&mut self, r#type: Self) -> Self {
        std::mem::replace(self, r#type)
    }

    #[write]
    fn hide(&mut self, secret: Option<Secret>) -> Option<Secret> {
        std::mem::replace(&mut self.secret, secret)
    }

    /// Compiled in: `all()` is always true.
    #[cfg(all())]
    #[write]
    fn compiled_in(&mut self) -> bool {
        true
    }

    /// Compiled out: `any()` is always false; its variant, client method
    /// and dispatch arm are gone too.
    #[cfg(any())]
    #[write]
    fn compiled_out(&mut self, missing: DoesNotExist) {}

    #[deprecated(note = "use `shapes`")]
    #[read]
    fn old_shapes(&self) -> Vec<Shape> {
        self.shapes.clone()
    }

    #[read]
    #[allow(clippy::needless_pass_by_value)]
    fn shapes(&self, skip: usize, take: Option<usize>) -> Vec<Shape> {
        let it = self.shapes.iter().skip(skip).cloned();
        match take {
            Some(n) => it.take(n).collect(),
            None => it.collect(),
        }
    }

    #[read(tag = 5)]
    fn by_kind(&self) -> BTreeMap<String, (u32, Option<Point>)> {
        let mut out = BTreeMap::new();
        for s in &self.shapes {
            let (k, p) = match s {
                Shape::Dot(p) => ("dot", Some(p.clone())),
                Shape::Line { from, .. } => ("line", Some(from.clone())),
                Shape::Nothing => ("nothing", None),
            };
            let e = out.entry(k.to_string()).or_insert((0, None));
            e.0 += 1;
            e.1 = p;
        }
        out
    }

    #[read]
    fn unit(&self) {}

    #[read]
    fn nested(&self) -> Result<Option<Vec<(String, [u8; 4])>>, String> {
        Ok(Some(vec![("a".into(), [1, 2, 3, 4])]))
    }

    /// A method that is not a handler is left alone.
    fn helper(&self) -> usize {
        self.shapes.len()
    }
}

// Zero handlers is a valid (if useless) state machine.
#[derive(StateMachine, Serialize, Deserialize)]
enum Empty {
    Only,
}

#[raftkit::state_machine]
impl Empty {}

fn main() {
    let canvas = KvLike::new(Local::new(Canvas::default()));
    block_on(canvas.clear()).unwrap();
    let dot = Shape::Dot(Point { x: 1, y: 2 });
    assert_eq!(block_on(canvas.draw(dot.clone(), 2, 10)), Ok(Ok(2)));
    assert_eq!(
        block_on(canvas.draw(Shape::Nothing, 20, 10)),
        Ok(Err(Rejected::TooMany { limit: 10 }))
    );
    let tags = block_on(canvas.tag("A".into(), vec![1, 2])).unwrap();
    assert_eq!(tags["a"].len(), 2);
    assert_eq!(block_on(canvas.hide(Some(Secret(7)))), Ok(None));
    assert_eq!(block_on(canvas.compiled_in()), Ok(true));
    assert_eq!(block_on(canvas.shapes(1, None)).unwrap(), vec![dot.clone()]);
    #[allow(deprecated)]
    let old = block_on(canvas.old_shapes()).unwrap();
    assert_eq!(old.len(), 2);
    assert_eq!(block_on(canvas.by_kind()).unwrap()["dot"].0, 2);
    block_on(canvas.unit()).unwrap();
    assert!(block_on(canvas.nested()).unwrap().is_ok());
    let previous = block_on(canvas.replace(Canvas::default())).unwrap();
    assert_eq!(previous.helper(), 2);
    assert_eq!(<Canvas as StateMachine>::NAME, "shapes-v1");
    assert_eq!(
        <Canvas as StateMachine>::error_policy(&CanvasWrite::Clear),
        ErrorPolicy::Halt
    );

    let _empty: EmptyClient<Local<Empty>> = EmptyClient::new(Local::new(Empty::Only));
    assert_eq!(<Empty as StateMachine>::NAME, "empty");
}

type KvLike<S> = CanvasClient<S>;
