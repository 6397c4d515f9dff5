"""Parameters of the procedural world. Units: metres, degrees."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from earthgen.errors import UserInputError

WORLD_CRS = "EPSG:32633"
FALSE_ORIGIN = (500_000.0, 5_000_000.0)  # metres added to world (x, y) in georeferenced outputs


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of :func:`earthgen.world.generate_world`. The defaults give a mixed landscape: a town
    around the world origin, villages, farmland, forests, lakes and rivers elsewhere."""

    # terrain
    relief_m: float = 45.0  # typical height amplitude
    terrain_wavelength_m: float = 1800.0  # base wavelength of the height field
    erosion: float = 1.2  # derivative damping of fine octaves (0 = plain fBm)
    lake_level: float = -0.45  # normalised height below which ground is a lake
    # rivers: zero crossings of a smooth noise field
    river_wavelength_m: float = 1600.0
    river_width_m: tuple[float, float] = (6.0, 30.0)
    river_presence: float = -0.2  # higher = fewer rivers
    # settlements
    urban_wavelength_m: float = 1400.0
    urban_bias: float = 0.0  # added to the urban field: > 0 more town, < 0 less
    town_at_origin: float = 1.6  # strength of the town centred on (0, 0); 0 = none
    town_radius_m: float = 700.0
    block_m: float = 90.0  # mean street spacing
    # rendering
    sun_azimuth_deg: float = 150.0  # clockwise from north
    sun_elevation_deg: float = 50.0
    haze: float = 0.04
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.sun_elevation_deg <= 90.0:
            raise UserInputError(
                f"sun elevation must be in (0, 90] degrees, got {self.sun_elevation_deg}"
            )
        if self.block_m < 30.0:
            raise UserInputError(f"block_m must be >= 30 m, got {self.block_m}")
        if self.relief_m < 0:
            raise UserInputError(f"relief_m must be >= 0, got {self.relief_m}")

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **kw) -> WorldConfig:
        return replace(self, **kw)


PRESETS: dict[str, dict] = {
    "mixed": {},
    "urban": {"urban_bias": 0.9, "town_at_origin": 2.5, "town_radius_m": 1500.0},
    "suburban": {"urban_bias": 0.3, "block_m": 110.0},
    "rural": {"urban_bias": -1.2, "town_at_origin": 0.0},
    "mountain": {"relief_m": 220.0, "urban_bias": -1.0, "town_at_origin": 0.5, "lake_level": -0.7},
}


def preset(name: str, **overrides) -> WorldConfig:
    if name not in PRESETS:
        raise UserInputError(f"unknown world preset {name!r}; choose from {', '.join(PRESETS)}")
    return WorldConfig(**{**PRESETS[name], **overrides})
