// Small SVG charts written by hand for sweep reports, with no dependency: a line chart (axes, ticks,
// labels, legend, colours, optional log scale) and a grid of grouped bar charts with a reference line.
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace mr1 {

// One line of a line chart. Points with a non-finite y (or y <= 0 on a log scale) are skipped.
struct LineSeries {
  std::string label;          // legend text; empty: not in the legend
  std::vector<double> x, y;   // same length
  size_t colour = 0;          // index into plot_colour
  bool dashed = false;
};

struct LineChart {
  std::string title;
  std::string subtitle;
  std::string x_label, y_label;
  std::vector<LineSeries> series;
  bool log_y = false;
  // A fixed y range (linear axes only); NaN: from the data.
  double y_low = NAN, y_high = NAN;
  // Extra legend rows that explain the line styles: (dashed, text), drawn in grey.
  std::vector<std::pair<bool, std::string>> style_keys;
  int width = 980, height = 560;
};

// Whether the finite y values of the chart's series are all positive and span more than a factor of 10,
// which a log scale shows better (losses falling by decades).
bool spans_decades(const LineChart& chart);

// The chart as a standalone SVG document. A chart without a single finite point still renders
// (axes and a "no data" note).
std::string line_chart_svg(const LineChart& chart);

// One panel of a bar grid: groups along the x axis, each with one bar per entry of `values[group]`.
struct BarPanel {
  std::string title;
  std::string subtitle;
  std::vector<std::string> groups;           // one label per group ("block 1")
  std::vector<std::vector<double>> values;   // groups × bars
  double reference = -1;                     // a dashed horizontal line at this value; < 0: none
  std::string reference_label;               // "uniform 1/4"
};

struct BarPanelGrid {
  std::string title;
  std::string subtitle;
  std::string y_label;
  std::vector<std::string> bar_names;        // legend: one name per bar position ("expert 0", ...)
  std::vector<BarPanel> panels;
  int columns = 4;
  int panel_width = 300, panel_height = 230;
};

// Every panel shares one y axis range (from 0 to the largest value or reference), so that panels compare.
std::string bar_panels_svg(const BarPanelGrid& grid);

// The i-th colour of the palette (Tableau 10, then repeating): "#1f77b4", ...
std::string plot_colour(size_t index);

// About `target` round tick values covering [low, high] (steps of 1, 2 or 5 times a power of ten).
std::vector<double> nice_ticks(double low, double high, int target);
// Tick values for a log axis over [low, high] (both > 0): powers of ten, with 2 and 5 between them
// when the range spans few decades.
std::vector<double> log_ticks(double low, double high);
// A tick label: as few decimals as the step between ticks needs ("0.25", "1500", "1e-03").
std::string tick_label(double value, double step);

// Text safe inside SVG elements and attributes.
std::string xml_escape(const std::string& text);

}  // namespace mr1
