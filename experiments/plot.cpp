// SVG line charts and bar-panel grids, written as text. Coordinates are in SVG pixels with y down;
// "plot area" is the rectangle inside the axes.
#include "experiments/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace mr1 {

namespace {

const char* kFont = "DejaVu Sans, Helvetica, Arial, sans-serif";
constexpr double kCharWidth = 7.0;  // the mean width of a 12-13 px glyph, for laying out legends

std::string number(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f", value);
  return buffer;
}

std::string svg_open(int width, int height) {
  std::ostringstream out;
  out << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << width << " " << height << "\" font-family=\"" << kFont << "\">\n"
      << "<rect x=\"0\" y=\"0\" width=\"" << width << "\" height=\"" << height << "\" fill=\"white\"/>\n";
  return out.str();
}

// <text> at (x, y); anchor start | middle | end.
std::string text(double x, double y, const std::string& content, int size, const std::string& anchor = "start",
                 const std::string& extra = "") {
  std::ostringstream out;
  out << "<text x=\"" << number(x) << "\" y=\"" << number(y) << "\" font-size=\"" << size << "\" text-anchor=\""
      << anchor << "\" fill=\"#222\"" << (extra.empty() ? "" : " " + extra) << ">" << xml_escape(content)
      << "</text>\n";
  return out.str();
}

std::string line(double x0, double y0, double x1, double y1, const std::string& colour, double width,
                 bool dashed = false) {
  std::ostringstream out;
  out << "<line x1=\"" << number(x0) << "\" y1=\"" << number(y0) << "\" x2=\"" << number(x1) << "\" y2=\""
      << number(y1) << "\" stroke=\"" << colour << "\" stroke-width=\"" << width << "\""
      << (dashed ? " stroke-dasharray=\"7 4\"" : "") << "/>\n";
  return out.str();
}

// A numeric axis: maps values to pixels between `pixel_low` (at `low`) and `pixel_high` (at `high`).
struct Axis {
  double low = 0, high = 1;
  double pixel_low = 0, pixel_high = 1;
  bool log = false;
  double to_pixel(double value) const {
    const double fraction = log ? (std::log10(value) - std::log10(low)) / (std::log10(high) - std::log10(low))
                                : (value - low) / (high - low);
    return pixel_low + fraction * (pixel_high - pixel_low);
  }
};

// The 1, 2, 5 × 10^k value at or below (down) or at or above (up) `value` > 0.
double nice_bound(double value, bool up) {
  const double decade = std::pow(10.0, std::floor(std::log10(value)));
  const double steps[] = {1, 2, 5, 10};
  if (up) {
    for (double step : steps) {
      if (step * decade >= value * (1 - 1e-12)) return step * decade;
    }
    return 10 * decade;
  }
  double best = decade;
  for (double step : steps) {
    if (step * decade <= value * (1 + 1e-12)) best = step * decade;
  }
  return best;
}

// A line of more points than its plot has pixel columns looks the same drawn through the first, lowest,
// highest and last point of each column, in their order: the others are left out (min/max decimation,
// which keeps every spike). Lines of up to 4 points per column are kept whole.
std::vector<std::pair<double, double>> decimate(const std::vector<std::pair<double, double>>& points, double columns) {
  if (static_cast<double>(points.size()) <= 4 * columns) return points;
  std::vector<std::pair<double, double>> kept;
  for (size_t begin = 0; begin < points.size();) {
    const double column = std::floor(points[begin].first);
    size_t end = begin, low = begin, high = begin;
    for (; end < points.size() && std::floor(points[end].first) == column; ++end) {
      if (points[end].second < points[low].second) low = end;
      if (points[end].second > points[high].second) high = end;
    }
    size_t chosen[] = {begin, low, high, end - 1};
    std::sort(std::begin(chosen), std::end(chosen));
    for (size_t i = 0; i < 4; ++i) {
      if (i == 0 || chosen[i] != chosen[i - 1]) kept.push_back(points[chosen[i]]);
    }
    begin = end;
  }
  return kept;
}

double tick_step(const std::vector<double>& ticks) { return ticks.size() > 1 ? ticks[1] - ticks[0] : 1.0; }

}  // namespace

std::string plot_colour(size_t index) {
  static const char* palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return palette[index % 10];
}

std::string xml_escape(const std::string& text) {
  std::string escaped;
  for (char c : text) {
    switch (c) {
      case '&': escaped += "&amp;"; break;
      case '<': escaped += "&lt;"; break;
      case '>': escaped += "&gt;"; break;
      case '"': escaped += "&quot;"; break;
      case '\'': escaped += "&apos;"; break;
      default: escaped += c;
    }
  }
  return escaped;
}

std::vector<double> nice_ticks(double low, double high, int target) {
  if (!(high > low)) return {low};
  const double raw = (high - low) / std::max(1, target);
  const double step = nice_bound(raw, true);
  std::vector<double> ticks;
  for (double i = std::ceil(low / step - 1e-9); i * step <= high + step * 1e-9; i += 1) {
    ticks.push_back(i == 0 ? 0.0 : i * step);
  }
  return ticks;
}

std::vector<double> log_ticks(double low, double high) {
  std::vector<double> ticks;
  const int first = static_cast<int>(std::floor(std::log10(low)));
  const int last = static_cast<int>(std::ceil(std::log10(high)));
  const bool fine = last - first <= 4;
  for (int exponent = first; exponent <= last; ++exponent) {
    for (double multiple : {1.0, 2.0, 5.0}) {
      if (multiple != 1.0 && !fine) continue;
      const double value = multiple * std::pow(10.0, exponent);
      if (value >= low * (1 - 1e-9) && value <= high * (1 + 1e-9)) ticks.push_back(value);
    }
  }
  return ticks;
}

std::string tick_label(double value, double step) {
  char buffer[32];
  const double magnitude = std::abs(value);
  if (magnitude != 0 && (magnitude >= 1e6 || magnitude < 1e-3)) {
    std::snprintf(buffer, sizeof buffer, "%.0e", value);
    return buffer;
  }
  const int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(std::abs(step)) - 1e-9)));
  std::snprintf(buffer, sizeof buffer, "%.*f", std::min(decimals, 6), value);
  return buffer;
}

bool spans_decades(const LineChart& chart) {
  double low = INFINITY, high = 0;
  for (const LineSeries& series : chart.series) {
    for (double y : series.y) {
      if (std::isfinite(y)) low = std::min(low, y), high = std::max(high, y);
    }
  }
  return low > 0 && high / low > 10;
}

namespace {

// Whether a point of a series can be drawn: finite, and positive on a log scale.
bool drawable(const LineChart& chart, double x, double y) {
  return std::isfinite(x) && std::isfinite(y) && !(chart.log_y && y <= 0);
}

// The range of the drawable points; a unit range when there are none (has_data false), widened where it
// is a single value.
struct DataRange {
  double x_min, x_max, y_min, y_max;
  bool has_data;
};

DataRange data_range(const LineChart& chart) {
  const double infinity = std::numeric_limits<double>::infinity();
  DataRange range{infinity, -infinity, infinity, -infinity, false};
  for (const LineSeries& series : chart.series) {
    for (size_t i = 0; i < series.x.size() && i < series.y.size(); ++i) {
      const double x = series.x[i], y = series.y[i];
      if (!drawable(chart, x, y)) continue;
      range.x_min = std::min(range.x_min, x), range.x_max = std::max(range.x_max, x);
      range.y_min = std::min(range.y_min, y), range.y_max = std::max(range.y_max, y);
    }
  }
  range.has_data = range.x_min <= range.x_max;
  if (!range.has_data) range.x_min = 0, range.x_max = 1, range.y_min = chart.log_y ? 0.1 : 0, range.y_max = 1;
  if (range.x_max == range.x_min) range.x_min -= 1, range.x_max += 1;
  if (range.y_max == range.y_min) {
    if (chart.log_y) range.y_min /= 2, range.y_max *= 2;
    else range.y_min -= 1, range.y_max += 1;
  }
  return range;
}

// The legend: one row per labelled series, then one per style key; as wide as its longest text needs.
struct LegendSize {
  int rows = 0;
  double width = 0;
};

LegendSize legend_size(const LineChart& chart) {
  size_t longest = 0;
  LegendSize size;
  for (const LineSeries& series : chart.series) {
    if (series.label.empty()) continue;
    longest = std::max(longest, series.label.size());
    ++size.rows;
  }
  for (const auto& key : chart.style_keys) longest = std::max(longest, key.second.size());
  size.rows += static_cast<int>(chart.style_keys.size());
  size.width = size.rows > 0 ? std::min(380.0, 44 + kCharWidth * longest) : 0;
  return size;
}

// The pixel rectangle inside the axes.
struct PlotArea {
  double left, right, top, bottom;
};

// An axis with its tick values.
struct TickedAxis {
  Axis axis;
  std::vector<double> ticks;
};

// The x axis: round ticks, extended by a step at either end that the data passes.
TickedAxis x_axis_of(const DataRange& range, const PlotArea& area) {
  TickedAxis x{{range.x_min, range.x_max, area.left, area.right, false}, nice_ticks(range.x_min, range.x_max, 8)};
  x.axis.low = std::min(range.x_min, x.ticks.front());
  x.axis.high = std::max(range.x_max, x.ticks.back());
  if (x.ticks.back() < range.x_max) {
    x.axis.high = x.ticks.back() + tick_step(x.ticks);
    x.ticks.push_back(x.axis.high);
  }
  if (x.ticks.front() > range.x_min) {
    x.axis.low = x.ticks.front() - tick_step(x.ticks);
    x.ticks.insert(x.ticks.begin(), x.axis.low);
  }
  return x;
}

// The y axis: decades on a log scale, the chart's fixed range when it has one, else round ticks that
// cover the data.
TickedAxis y_axis_of(const LineChart& chart, const DataRange& range, const PlotArea& area) {
  TickedAxis y{{range.y_min, range.y_max, area.bottom, area.top, chart.log_y}, {}};
  if (chart.log_y) {
    y.axis.low = nice_bound(range.y_min, false);
    y.axis.high = nice_bound(range.y_max, true);
    y.ticks = log_ticks(y.axis.low, y.axis.high);
  } else if (std::isfinite(chart.y_low) && std::isfinite(chart.y_high) && chart.y_high > chart.y_low) {
    y.ticks = nice_ticks(chart.y_low, chart.y_high, 5);
    y.axis.low = chart.y_low;
    y.axis.high = chart.y_high;
  } else {
    y.ticks = nice_ticks(range.y_min, range.y_max, 6);
    const double step = tick_step(y.ticks);
    if (y.ticks.front() > range.y_min) y.ticks.insert(y.ticks.begin(), y.ticks.front() - step);
    if (y.ticks.back() < range.y_max) y.ticks.push_back(y.ticks.back() + step);
    y.axis.low = y.ticks.front();
    y.axis.high = y.ticks.back();
  }
  return y;
}

// The grid, the ticks and their labels, the frame and the axis labels.
std::string axes_svg(const LineChart& chart, const PlotArea& area, const TickedAxis& x, const TickedAxis& y) {
  std::ostringstream out;
  for (double tick : x.ticks) {
    const double pixel = x.axis.to_pixel(tick);
    out << line(pixel, area.top, pixel, area.bottom, "#e6e6e6", 1);
    out << line(pixel, area.bottom, pixel, area.bottom + 5, "#333", 1);
    out << text(pixel, area.bottom + 20, tick_label(tick, tick_step(x.ticks)), 12, "middle");
  }
  for (double tick : y.ticks) {
    const double pixel = y.axis.to_pixel(tick);
    out << line(area.left, pixel, area.right, pixel, "#e6e6e6", 1);
    out << line(area.left - 5, pixel, area.left, pixel, "#333", 1);
    out << text(area.left - 8, pixel + 4, tick_label(tick, chart.log_y ? tick : tick_step(y.ticks)), 12, "end");
  }
  out << "<rect x=\"" << number(area.left) << "\" y=\"" << number(area.top) << "\" width=\""
      << number(area.right - area.left) << "\" height=\"" << number(area.bottom - area.top)
      << "\" fill=\"none\" stroke=\"#333\" stroke-width=\"1\"/>\n";
  out << text((area.left + area.right) / 2, chart.height - 18, chart.x_label, 14, "middle");
  const double label_x = 24, label_y = (area.top + area.bottom) / 2;
  out << text(label_x, label_y, chart.y_label + (chart.log_y ? " (log scale)" : ""), 14, "middle",
              "transform=\"rotate(-90 " + number(label_x) + " " + number(label_y) + ")\"");
  return out.str();
}

// The series as polylines clipped to the plot area, then dots (not clipped, so that points on an edge
// show) on lone points and on sparse dashed lines (evaluations).
std::string series_svg(const LineChart& chart, const PlotArea& area, const TickedAxis& x, const TickedAxis& y) {
  std::ostringstream out;
  out << "<clipPath id=\"plot-area\"><rect x=\"" << number(area.left) << "\" y=\"" << number(area.top)
      << "\" width=\"" << number(area.right - area.left) << "\" height=\"" << number(area.bottom - area.top)
      << "\"/></clipPath>\n";
  out << "<g clip-path=\"url(#plot-area)\" fill=\"none\" stroke-linejoin=\"round\" stroke-linecap=\"round\">\n";
  std::ostringstream dots;
  for (const LineSeries& series : chart.series) {
    std::vector<std::pair<double, double>> pixels;
    for (size_t i = 0; i < series.x.size() && i < series.y.size(); ++i) {
      if (drawable(chart, series.x[i], series.y[i])) {
        pixels.push_back({x.axis.to_pixel(series.x[i]), y.axis.to_pixel(series.y[i])});
      }
    }
    pixels = decimate(pixels, area.right - area.left);
    const std::string colour = plot_colour(series.colour);
    out << "<polyline data-series=\"" << xml_escape(series.label) << "\" points=\"";
    for (size_t i = 0; i < pixels.size(); ++i) {
      out << (i ? " " : "") << number(pixels[i].first) << "," << number(pixels[i].second);
    }
    out << "\" stroke=\"" << colour << "\" stroke-width=\"" << (series.dashed ? 1.8 : 2.2) << "\""
        << (series.dashed ? " stroke-dasharray=\"7 4\"" : "") << "/>\n";
    if (pixels.size() == 1 || (series.dashed && pixels.size() <= 40)) {
      for (const auto& [px, py] : pixels) {
        dots << "<circle cx=\"" << number(px) << "\" cy=\"" << number(py) << "\" r=\"3\" fill=\"" << colour << "\"/>\n";
      }
    }
  }
  out << "</g>\n" << dots.str();
  return out.str();
}

// The legend right of the plot area: a line sample and the label of each labelled series, then the
// style keys in grey.
std::string legend_svg(const LineChart& chart, const PlotArea& area, const LegendSize& legend) {
  if (legend.rows == 0) return "";
  std::ostringstream out;
  const double row = std::min(22.0, (area.bottom - area.top) / legend.rows);
  const double x = area.right + 18;
  double y = area.top + 10;
  for (const LineSeries& series : chart.series) {
    if (series.label.empty()) continue;
    out << line(x, y, x + 26, y, plot_colour(series.colour), 2.6, series.dashed);
    out << text(x + 34, y + 4.5, series.label, 13);
    y += row;
  }
  for (const auto& [dashed, label] : chart.style_keys) {
    out << line(x, y, x + 26, y, "#555", 2, dashed);
    out << text(x + 34, y + 4.5, label, 13, "start", "fill-opacity=\"0.75\"");
    y += row;
  }
  return out.str();
}

}  // namespace

std::string line_chart_svg(const LineChart& chart) {
  const DataRange range = data_range(chart);
  const LegendSize legend = legend_size(chart);
  const PlotArea area{84, chart.width - 24 - legend.width, chart.subtitle.empty() ? 56.0 : 74.0,
                      chart.height - 62.0};
  const TickedAxis x = x_axis_of(range, area);
  const TickedAxis y = y_axis_of(chart, range, area);

  std::ostringstream out;
  out << svg_open(chart.width, chart.height);
  out << text(area.left, 28, chart.title, 18, "start", "font-weight=\"bold\"");
  if (!chart.subtitle.empty()) out << text(area.left, 50, chart.subtitle, 13, "start", "fill-opacity=\"0.8\"");
  out << axes_svg(chart, area, x, y);
  if (!range.has_data) {
    out << text((area.left + area.right) / 2, (area.top + area.bottom) / 2, "no data", 16, "middle");
  }
  out << series_svg(chart, area, x, y) << legend_svg(chart, area, legend) << "</svg>\n";
  return out.str();
}

namespace {

// The legend of bar names, wrapped to the width: each name's (x, row).
std::vector<std::pair<double, int>> bar_legend_positions(const BarPanelGrid& grid, int width) {
  std::vector<std::pair<double, int>> positions;
  double x = 20;
  int row = 0;
  for (const std::string& name : grid.bar_names) {
    const double item = 24 + kCharWidth * name.size() + 14;
    if (x + item > width - 20 && x > 20) x = 20, ++row;
    positions.push_back({x, row});
    x += item;
  }
  return positions;
}

// The ticks of the y axis all panels share: from 0 to the largest value or reference, with a margin.
std::vector<double> shared_bar_ticks(const BarPanelGrid& grid) {
  double y_max = 0;
  for (const BarPanel& panel : grid.panels) {
    y_max = std::max(y_max, panel.reference);
    for (const auto& group : panel.values) {
      for (double value : group) {
        if (std::isfinite(value)) y_max = std::max(y_max, value);
      }
    }
  }
  if (y_max <= 0) y_max = 1;
  std::vector<double> ticks = nice_ticks(0, y_max * 1.04, 4);
  if (ticks.back() < y_max * 1.04) ticks.push_back(ticks.back() + tick_step(ticks));
  return ticks;
}

// Panel p of the grid, whose top-left corner is (origin_x, origin_y): its title, y ticks (and the grid's
// y label in the first column), the bars of each group and the reference line.
std::string bar_panel_svg(const BarPanelGrid& grid, size_t p, double origin_x, double origin_y, bool first_column,
                          const std::vector<double>& y_ticks) {
  const BarPanel& panel = grid.panels[p];
  const double left = origin_x + 52, right = origin_x + grid.panel_width - 14;
  const double top = origin_y + (panel.subtitle.empty() ? 26 : 42), bottom = origin_y + grid.panel_height - 34;
  const Axis y_axis{y_ticks.front(), y_ticks.back(), bottom, top, false};

  std::ostringstream out;
  out << "<g>\n";
  out << text(left, origin_y + 14, panel.title, 13, "start", "font-weight=\"bold\"");
  if (!panel.subtitle.empty()) out << text(left, origin_y + 31, panel.subtitle, 11, "start", "fill-opacity=\"0.8\"");
  for (double tick : y_ticks) {
    const double y = y_axis.to_pixel(tick);
    out << line(left, y, right, y, "#e6e6e6", 1);
    out << text(left - 6, y + 4, tick_label(tick, tick_step(y_ticks)), 11, "end");
  }
  if (first_column && !grid.y_label.empty()) {
    const double label_x = origin_x + 10, label_y = (top + bottom) / 2;
    out << text(label_x, label_y, grid.y_label, 12, "middle",
                "transform=\"rotate(-90 " + number(label_x) + " " + number(label_y) + ")\"");
  }
  const size_t groups = panel.values.size();
  const double group_width = (right - left) / std::max<size_t>(1, groups);
  for (size_t g = 0; g < groups; ++g) {
    const size_t bars = panel.values[g].size();
    const double bar_width = group_width * 0.8 / std::max<size_t>(1, bars);
    const double group_left = left + g * group_width + group_width * 0.1;
    const std::string group = g < panel.groups.size() ? panel.groups[g] : "";
    for (size_t b = 0; b < bars; ++b) {
      const double value = panel.values[g][b];
      if (!std::isfinite(value)) continue;
      const double y = y_axis.to_pixel(std::max(0.0, value));
      const std::string bar = b < grid.bar_names.size() ? grid.bar_names[b] : "";
      out << "<rect x=\"" << number(group_left + b * bar_width) << "\" y=\"" << number(y) << "\" width=\""
          << number(std::max(1.0, bar_width - 1)) << "\" height=\"" << number(bottom - y) << "\" fill=\""
          << plot_colour(b) << "\"><title>" << xml_escape(group + ", " + bar) << ": " << tick_label(value, 0.0001)
          << "</title></rect>\n";
    }
    if (g < panel.groups.size()) out << text(left + (g + 0.5) * group_width, bottom + 16, group, 11, "middle");
  }
  out << line(left, bottom, right, bottom, "#333", 1) << line(left, top, left, bottom, "#333", 1);
  if (panel.reference >= 0) {
    const double y = y_axis.to_pixel(panel.reference);
    out << line(left, y, right, y, "#222", 1.4, true);
    if (!panel.reference_label.empty()) out << text(right, y - 4, panel.reference_label, 10, "end");
  }
  out << "</g>\n";
  return out.str();
}

}  // namespace

std::string bar_panels_svg(const BarPanelGrid& grid) {
  const int count = static_cast<int>(grid.panels.size());
  const int columns = std::max(1, std::min(grid.columns, count));
  const int rows = std::max(1, (count + columns - 1) / columns);
  const double title_width = std::max(static_cast<double>(grid.subtitle.size()), grid.title.size() * 1.4);
  const int width = std::max({columns * grid.panel_width + 40, 520, static_cast<int>(40 + 6.6 * title_width)});
  const std::vector<std::pair<double, int>> legend = bar_legend_positions(grid, width);
  const double legend_top = grid.subtitle.empty() ? 50 : 70;
  const int legend_rows = legend.empty() ? 0 : legend.back().second + 1;
  const double panels_top = legend_top + 22.0 * legend_rows + 8;
  const int height = static_cast<int>(panels_top + rows * grid.panel_height + 10);
  const std::vector<double> y_ticks = shared_bar_ticks(grid);

  std::ostringstream out;
  out << svg_open(width, height);
  out << text(20, 28, grid.title, 18, "start", "font-weight=\"bold\"");
  if (!grid.subtitle.empty()) out << text(20, 50, grid.subtitle, 13, "start", "fill-opacity=\"0.8\"");
  for (size_t i = 0; i < grid.bar_names.size(); ++i) {
    const double x = legend[i].first, y = legend_top + 22.0 * legend[i].second;
    out << "<rect x=\"" << number(x) << "\" y=\"" << number(y - 11) << "\" width=\"16\" height=\"14\" fill=\""
        << plot_colour(i) << "\"/>\n";
    out << text(x + 22, y + 1, grid.bar_names[i], 13);
  }
  for (int p = 0; p < count; ++p) {
    out << bar_panel_svg(grid, static_cast<size_t>(p), 20 + (p % columns) * grid.panel_width,
                         panels_top + (p / columns) * grid.panel_height, p % columns == 0, y_ticks);
  }
  out << "</svg>\n";
  return out.str();
}

}  // namespace mr1
