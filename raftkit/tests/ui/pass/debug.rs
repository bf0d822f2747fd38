//! The generated enums are `Debug` whatever their argument types: a field
//! whose type has `Debug` uses it, one without prints its type's name.
#![deny(warnings)]

use raftkit::prelude::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    x: i64,
    y: i64,
}

/// No `Debug` here.
#[derive(Clone, Serialize, Deserialize)]
pub struct Opaque(u8);

#[derive(StateMachine, Default, Serialize, Deserialize)]
pub struct Canvas {
    points: Vec<Point>,
}

#[raftkit::state_machine]
impl Canvas {
    #[write]
    fn add(&mut self, point: Point, label: String) -> usize {
        let _ = label;
        self.points.push(point);
        self.points.len()
    }

    #[write]
    fn clear(&mut self) {}

    #[write]
    fn secret(&mut self, ctx: &Ctx, blob: Opaque) -> Opaque {
        let _ = ctx;
        blob
    }

    #[read]
    fn count(&self) -> usize {
        self.points.len()
    }
}

fn main() {
    let add = CanvasWrite::Add {
        point: Point { x: 1, y: -2 },
        label: "a".into(),
    };
    assert_eq!(
        format!("{add:?}"),
        r#"Add { point: Point { x: 1, y: -2 }, label: "a" }"#
    );
    assert_eq!(format!("{:?}", CanvasWrite::Clear), "Clear");
    let secret = CanvasWrite::Secret { blob: Opaque(7) };
    // A field without `Debug` shows its type's path (the crate name differs
    // under trybuild).
    let shown = format!("{secret:?}");
    assert!(
        shown.starts_with("Secret { blob: <") && shown.ends_with("::Opaque> }"),
        "{shown}"
    );
    assert_eq!(format!("{:?}", CanvasWriteOutput::Add(3)), "Add(3)");
    let shown = format!("{:?}", CanvasWriteOutput::Secret(Opaque(1)));
    assert!(
        shown.starts_with("Secret(<") && shown.ends_with("::Opaque>)"),
        "{shown}"
    );
    assert_eq!(format!("{:?}", CanvasRead::Count), "Count");
    assert_eq!(format!("{:#?}", CanvasReadOutput::Count(2)), "Count(\n    2,\n)");
}
