//! The road network: a street grid over central Shanghai, generated in code at startup.
//!
//! A real navigation partner routes on a licensed map. The reference adapter generates a city
//! instead, so that it needs no download and every run (and every test) sees the same roads:
//! [`ROWS`] east-west streets and [`COLUMNS`] north-south streets crossing at regular
//! intersections from Xujiahui to Lujiazui, each street with a class (its speed limit) and
//! some of them one-way, as the side streets of Puxi are. Several long roads change name
//! where they cross Xizang Road (Nanjing West Road becomes Nanjing East Road), so routes have
//! "continue onto" steps as real ones do.
//!
//! The graph is directed: a two-way street is two edges, a one-way street one, in its
//! direction of travel. Every edge knows its length and speed limit, so its travel time.

use petgraph::graph::{DiGraph, NodeIndex};
use proto::navigation::v1::GeoPoint;

use crate::geo;

/// East-west streets, south to north.
pub const ROWS: usize = 13;
/// North-south streets, west to east.
pub const COLUMNS: usize = 17;
/// Latitude of the southernmost street.
pub const SOUTH: f64 = 31.190;
/// Longitude of the westernmost street.
pub const WEST: f64 = 121.430;
/// Degrees of latitude between two east-west streets (about 500 m).
pub const LATITUDE_STEP: f64 = 0.0045;
/// Degrees of longitude between two north-south streets (about 475 m at this latitude).
pub const LONGITUDE_STEP: f64 = 0.005;
/// The column of Xizang Road, where "West" roads become "East" roads.
const XIZANG_ROAD: usize = 10;

/// What kind of road a street is, which sets its speed limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreetClass {
    /// Main roads and avenues: 60 km/h.
    Arterial,
    /// Through roads between neighbourhoods: 40 km/h.
    Secondary,
    /// Side streets: 30 km/h.
    Local,
}

impl StreetClass {
    /// The speed limit, in km/h.
    pub const fn speed_limit_kmh(self) -> u32 {
        match self {
            StreetClass::Arterial => 60,
            StreetClass::Secondary => 40,
            StreetClass::Local => 30,
        }
    }
}

/// Which way traffic may go along a grid line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Both ways.
    TwoWay,
    /// One-way, north or east (towards higher row or column numbers).
    NorthOrEast,
    /// One-way, south or west.
    SouthOrWest,
}

/// One grid line: its name (west/south part, then east/north part when it changes at
/// Xizang Road), its class and its traffic.
struct GridLine {
    name: &'static str,
    name_east: Option<&'static str>,
    class: StreetClass,
    traffic: Traffic,
}

/// A street with one name along its whole length.
const fn line(name: &'static str, class: StreetClass, traffic: Traffic) -> GridLine {
    GridLine {
        name,
        name_east: None,
        class,
        traffic,
    }
}

/// A street whose name changes east of Xizang Road (Nanjing West Road, then Nanjing East Road).
const fn split(name: &'static str, name_east: &'static str, class: StreetClass, traffic: Traffic) -> GridLine {
    GridLine {
        name_east: Some(name_east),
        ..line(name, class, traffic)
    }
}

use StreetClass::{Arterial, Local, Secondary};
use Traffic::{NorthOrEast, SouthOrWest, TwoWay};

/// The east-west streets, south to north. The outermost are two-way: with them every one-way
/// street leads somewhere it can be left again, which keeps the city strongly connected.
const EAST_WEST: [GridLine; ROWS] = [
    line("Zhaojiabang Road", Arterial, TwoWay),
    line("Xietu Road", Local, NorthOrEast),
    line("Jianguo Road", Local, SouthOrWest),
    line("Fuxing Road", Secondary, TwoWay),
    line("Yongjia Road", Local, NorthOrEast),
    split("Huaihai Middle Road", "Huaihai East Road", Secondary, TwoWay),
    split("Yan'an West Road", "Yan'an East Road", Arterial, TwoWay),
    line("Weihai Road", Local, SouthOrWest),
    split("Nanjing West Road", "Nanjing East Road", Secondary, TwoWay),
    line("Fengyang Road", Local, NorthOrEast),
    split("Beijing West Road", "Beijing East Road", Secondary, TwoWay),
    line("Suzhou Road", Local, SouthOrWest),
    line("Tianmu Road", Arterial, TwoWay),
];

/// The north-south streets, west to east; the outermost are two-way too.
const NORTH_SOUTH: [GridLine; COLUMNS] = [
    line("Caoxi Road", Arterial, TwoWay),
    line("Wanping Road", Local, NorthOrEast),
    line("Urumqi Road", Local, SouthOrWest),
    line("Huashan Road", Secondary, TwoWay),
    line("Changshu Road", Local, NorthOrEast),
    line("Shaanxi Road", Secondary, TwoWay),
    line("Maoming Road", Local, SouthOrWest),
    line("Chengdu Road", Arterial, TwoWay),
    line("Chongqing Road", Local, NorthOrEast),
    line("Madang Road", Secondary, TwoWay),
    line("Xizang Road", Arterial, TwoWay),
    line("Yunnan Road", Local, SouthOrWest),
    line("Henan Road", Secondary, TwoWay),
    line("Sichuan Road", Local, NorthOrEast),
    line("Jiangxi Road", Local, SouthOrWest),
    line("Zhongshan East 1st Road", Arterial, TwoWay),
    line("Century Avenue", Arterial, TwoWay),
];

/// An intersection of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Intersection {
    /// Where it is.
    pub location: GeoPoint,
}

/// One block of one street, driven in one direction: an edge of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct RoadSegment {
    /// The street's name, as instructions say it.
    pub street: &'static str,
    /// Length, in metres.
    pub length_m: f64,
    /// Speed limit, in km/h.
    pub speed_limit_kmh: u32,
}

impl RoadSegment {
    /// Seconds to drive it at its speed limit.
    pub fn travel_time_s(&self) -> f64 {
        self.length_m / (f64::from(self.speed_limit_kmh) / 3.6)
    }
}

/// The road network: intersections and directed road segments.
#[derive(Debug, Clone)]
pub struct City {
    graph: DiGraph<Intersection, RoadSegment>,
}

impl City {
    /// The generated city over central Shanghai; the same on every call.
    pub fn shanghai() -> City {
        let mut graph = DiGraph::with_capacity(ROWS * COLUMNS, 4 * ROWS * COLUMNS);
        for row in 0..ROWS {
            for column in 0..COLUMNS {
                let location = geo::point(
                    SOUTH + LATITUDE_STEP * row as f64,
                    WEST + LONGITUDE_STEP * column as f64,
                );
                graph.add_node(Intersection { location });
            }
        }
        let node = |row: usize, column: usize| NodeIndex::new(row * COLUMNS + column);
        let mut add_block = |line: &GridLine, west_or_south: NodeIndex, east_or_north: NodeIndex, east: bool| {
            let street = match line.name_east {
                Some(name_east) if east => name_east,
                _ => line.name,
            };
            let length_m = geo::distance_m(&graph[west_or_south].location, &graph[east_or_north].location);
            let segment = RoadSegment {
                street,
                length_m,
                speed_limit_kmh: line.class.speed_limit_kmh(),
            };
            if line.traffic != SouthOrWest {
                graph.add_edge(west_or_south, east_or_north, segment.clone());
            }
            if line.traffic != NorthOrEast {
                graph.add_edge(east_or_north, west_or_south, segment);
            }
        };
        for (row, line) in EAST_WEST.iter().enumerate() {
            for column in 0..COLUMNS - 1 {
                add_block(line, node(row, column), node(row, column + 1), column >= XIZANG_ROAD);
            }
        }
        for (column, line) in NORTH_SOUTH.iter().enumerate() {
            for row in 0..ROWS - 1 {
                add_block(line, node(row, column), node(row + 1, column), false);
            }
        }
        City { graph }
    }

    /// The directed graph: intersections, and road segments in their direction of travel.
    pub fn graph(&self) -> &DiGraph<Intersection, RoadSegment> {
        &self.graph
    }

    /// Where intersection `node` is.
    pub fn location(&self, node: NodeIndex) -> GeoPoint {
        self.graph[node].location
    }

    /// The intersection nearest `point`, and how far it is in metres (straight line).
    pub fn nearest_intersection(&self, point: &GeoPoint) -> (NodeIndex, f64) {
        // A linear scan: a few hundred intersections take microseconds. A real map would use a
        // spatial index (an R-tree) and snap to the nearest segment, not intersection.
        self.graph
            .node_indices()
            .map(|node| (node, geo::distance_m(point, &self.location(node))))
            .min_by(|(a, da), (b, db)| da.total_cmp(db).then_with(|| a.cmp(b)))
            .expect("the city has intersections")
    }

    /// The fastest speed limit anywhere, in km/h (A*'s heuristic divides distance by it).
    pub fn top_speed_kmh(&self) -> u32 {
        self.graph
            .edge_weights()
            .map(|segment| segment.speed_limit_kmh)
            .max()
            .unwrap_or(1)
    }

    /// A human description of the area the map covers, for error messages.
    pub fn area(&self) -> String {
        format!(
            "latitude {SOUTH:.3} to {:.3}, longitude {WEST:.3} to {:.3} (central Shanghai)",
            SOUTH + LATITUDE_STEP * (ROWS - 1) as f64,
            WEST + LONGITUDE_STEP * (COLUMNS - 1) as f64
        )
    }
}

#[cfg(test)]
mod tests {
    use petgraph::algo::kosaraju_scc;
    use petgraph::visit::EdgeRef as _;

    use super::*;

    #[test]
    fn every_intersection_can_reach_every_other() {
        let city = City::shanghai();
        let components = kosaraju_scc(city.graph());
        assert_eq!(
            components.len(),
            1,
            "{} strongly connected components",
            components.len()
        );
    }

    #[test]
    fn the_city_is_the_same_on_every_build() {
        let (a, b) = (City::shanghai(), City::shanghai());
        let nodes = |c: &City| c.graph().node_weights().cloned().collect::<Vec<_>>();
        let edges = |c: &City| {
            c.graph()
                .edge_references()
                .map(|e| (e.source(), e.target(), e.weight().clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(nodes(&a), nodes(&b));
        assert_eq!(edges(&a), edges(&b));
        // The shape itself, so that a change to the generator is a deliberate one.
        assert_eq!(a.graph().node_count(), ROWS * COLUMNS);
        let one_way_blocks = 6 * (COLUMNS - 1) + 8 * (ROWS - 1);
        let blocks = ROWS * (COLUMNS - 1) + COLUMNS * (ROWS - 1);
        assert_eq!(a.graph().edge_count(), 2 * blocks - one_way_blocks);
    }

    #[test]
    fn one_way_streets_have_one_edge_per_block_in_their_direction() {
        let city = City::shanghai();
        let g = city.graph();
        let node = |row: usize, column: usize| NodeIndex::new(row * COLUMNS + column);
        // Xietu Road (row 1) runs east only; Jianguo Road (row 2) west only.
        assert!(g.find_edge(node(1, 3), node(1, 4)).is_some());
        assert!(g.find_edge(node(1, 4), node(1, 3)).is_none());
        assert!(g.find_edge(node(2, 4), node(2, 3)).is_some());
        assert!(g.find_edge(node(2, 3), node(2, 4)).is_none());
        // Urumqi Road (column 2) runs south only.
        assert!(g.find_edge(node(5, 2), node(4, 2)).is_some());
        assert!(g.find_edge(node(4, 2), node(5, 2)).is_none());
        // Nanjing Road changes name at Xizang Road.
        let west = g.find_edge(node(8, 9), node(8, 10)).unwrap();
        let east = g.find_edge(node(8, 10), node(8, 11)).unwrap();
        assert_eq!(g[west].street, "Nanjing West Road");
        assert_eq!(g[east].street, "Nanjing East Road");
    }

    #[test]
    fn speed_limits_follow_the_street_class() {
        let city = City::shanghai();
        let limits: std::collections::BTreeSet<u32> = city.graph().edge_weights().map(|s| s.speed_limit_kmh).collect();
        assert_eq!(limits.into_iter().collect::<Vec<_>>(), [30, 40, 60]);
        assert_eq!(city.top_speed_kmh(), 60);
        let block = RoadSegment {
            street: "Xizang Road",
            length_m: 500.0,
            speed_limit_kmh: 60,
        };
        assert!((block.travel_time_s() - 30.0).abs() < 1e-9);
    }

    #[test]
    fn nearest_intersection_snaps_to_the_grid() {
        let city = City::shanghai();
        let (node, distance) = city.nearest_intersection(&geo::point(SOUTH + 0.0001, WEST + 0.0001));
        assert_eq!(node, NodeIndex::new(0));
        assert!(distance < 20.0, "{distance}");
    }
}
