//! Where regions are: cloud region names (AWS-style, plus a few GCP/Azure
//! spellings and plain area names) → a city and its coordinates, to place
//! nodes on the dashboard's map.

use kobo_protocol::Place;

/// Region → (city, latitude, longitude). Matching ignores case.
const REGIONS: &[(&str, &str, f64, f64)] = &[
    ("ap-northeast-1", "Tokyo", 35.68, 139.69),
    ("ap-northeast-2", "Seoul", 37.57, 126.98),
    ("ap-northeast-3", "Osaka", 34.69, 135.50),
    ("ap-east-1", "Hong Kong", 22.32, 114.17),
    ("ap-south-1", "Mumbai", 19.08, 72.88),
    ("ap-southeast-1", "Singapore", 1.35, 103.82),
    ("ap-southeast-2", "Sydney", -33.87, 151.21),
    ("ap-southeast-3", "Jakarta", -6.21, 106.85),
    ("ca-central-1", "Montréal", 45.50, -73.57),
    ("eu-central-1", "Frankfurt", 50.11, 8.68),
    ("eu-central-2", "Zürich", 47.38, 8.54),
    ("eu-north-1", "Stockholm", 59.33, 18.07),
    ("eu-south-1", "Milan", 45.46, 9.19),
    ("eu-west-1", "Dublin", 53.35, -6.26),
    ("eu-west-2", "London", 51.51, -0.13),
    ("eu-west-3", "Paris", 48.86, 2.35),
    ("me-south-1", "Bahrain", 26.07, 50.56),
    ("sa-east-1", "São Paulo", -23.55, -46.63),
    ("af-south-1", "Cape Town", -33.92, 18.42),
    ("us-east-1", "N. Virginia", 38.90, -77.45),
    ("us-east-2", "Ohio", 39.96, -83.00),
    ("us-west-1", "N. California", 37.35, -121.96),
    ("us-west-2", "Oregon", 45.60, -121.18),
    ("asia-northeast1", "Tokyo", 35.68, 139.69),
    ("asia-northeast2", "Osaka", 34.69, 135.50),
    ("europe-west2", "London", 51.51, -0.13),
    ("europe-west3", "Frankfurt", 50.11, 8.68),
    ("us-central1", "Iowa", 41.26, -95.86),
    ("japaneast", "Tokyo", 35.68, 139.69),
    ("japanwest", "Osaka", 34.69, 135.50),
    ("uksouth", "London", 51.51, -0.13),
    ("westeurope", "Amsterdam", 52.37, 4.90),
    ("eastus", "Virginia", 37.43, -78.66),
    ("tokyo", "Tokyo", 35.68, 139.69),
    ("osaka", "Osaka", 34.69, 135.50),
    ("london", "London", 51.51, -0.13),
];

/// Where `region` is, if the table knows it.
pub fn place_of(region: &str) -> Option<Place> {
    REGIONS
        .iter()
        .find(|(name, ..)| name.eq_ignore_ascii_case(region.trim()))
        .map(|&(_, city, latitude, longitude)| Place {
            city: city.to_string(),
            latitude,
            longitude,
        })
}

#[cfg(test)]
mod tests {
    use super::place_of;

    #[test]
    fn demo_regions_are_placed_and_unknown_ones_are_not() {
        let tokyo = place_of("ap-northeast-1").expect("tokyo");
        assert_eq!(tokyo.city, "Tokyo");
        assert!((tokyo.latitude - 35.68).abs() < 0.01);
        assert_eq!(place_of("AP-NORTHEAST-3").expect("osaka").city, "Osaka");
        let london = place_of("eu-west-2").expect("london");
        assert!(london.longitude < 0.0 && london.latitude > 51.0);
        assert!(place_of("moon-base-1").is_none());
    }

    #[test]
    fn coordinates_are_on_the_globe() {
        for (name, _, lat, lon) in super::REGIONS {
            assert!((-90.0..=90.0).contains(lat), "{name}");
            assert!((-180.0..=180.0).contains(lon), "{name}");
        }
    }
}
