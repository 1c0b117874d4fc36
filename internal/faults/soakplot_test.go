package faults

// A PNG line chart drawn with image/draw and a built-in 3×5 pixel font
// (upper case, digits, a little punctuation): no plotting dependency.

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"strings"
)

// glyphs are 3 columns × 5 rows, '#' set, row after row.
var glyphs = map[rune]string{
	'0': "####.##.##.####", '1': ".#.##..#..#.###", '2': "###..#####..###", '3': "###..####..####",
	'4': "#.##.####..#..#", '5': "####..###..####", '6': "####..####.####", '7': "###..#..#..#..#",
	'8': "####.#####.####", '9': "####.####..####",
	'A': ".#.#.#####.##.#", 'B': "##.#.###.#.###.", 'C': "####..#..#..###", 'D': "##.#.##.##.###.",
	'E': "####..##.#..###", 'F': "####..##.#..#..", 'G': "####..#.##.####", 'H': "#.##.#####.##.#",
	'I': "###.#..#..#.###", 'J': "..#..#..##.####", 'K': "#.##.###.#.##.#", 'L': "#..#..#..#..###",
	'M': "#.#####.##.##.#", 'N': "##.#.##.##.##.#", 'O': ".#.#.##.##.#.#.", 'P': "####.#####..#..",
	'Q': "####.##.####..#", 'R': "##.#.###.#.##.#", 'S': ".###...#...###.", 'T': "###.#..#..#..#.",
	'U': "#.##.##.##.####", 'V': "#.##.##.##.#.#.", 'W': "#.##.########.#", 'X': "#.##.#.#.#.##.#",
	'Y': "#.##.#.#..#..#.", 'Z': "###..#.#.#..###",
	' ': "...............", '.': ".............#.", ',': "..........#.#..", ':': "....#.....#....",
	'-': "......###......", '/': "..#..#.#.#..#..", '(': ".#.#..#..#...#.", ')': ".#...#..#..#.#.",
	'=': "...###...###...", '%': "#.#..#.#.#..#.#", '+': "....#.###.#....", '_': "............###",
	'*': "....#.###.#....", '>': "#...#...#.#.#..", '<': "..#.#.#...#...#",
}

// drawText writes s (upper-cased) at x, y (top left) in c, each font
// pixel scale×scale.
func drawText(img draw.Image, x, y, scale int, c color.Color, s string) {
	for _, r := range strings.ToUpper(s) {
		g, ok := glyphs[r]
		if !ok {
			g = glyphs['*']
		}
		for i, p := range g {
			if p == '#' {
				px, py := x+(i%3)*scale, y+(i/3)*scale
				draw.Draw(img, image.Rect(px, py, px+scale, py+scale), image.NewUniform(c), image.Point{}, draw.Src)
			}
		}
		x += 4 * scale
	}
}

func textWidth(s string, scale int) int { return len([]rune(s)) * 4 * scale }

// series is one line of a panel.
type series struct {
	name  string
	color color.RGBA
	ys    []float64
}

// panel is one chart: lines over the shared x values, y from 0.
type panel struct {
	title  string
	series []series
}

// plotPNG draws the panels one above the other over xs (minutes) and
// writes the PNG to path.
func plotPNG(path, title string, xs []float64, panels []panel) error {
	const (
		w, ph        = 1100, 300 // image width, panel height
		left, right  = 90, 45
		top, bottom  = 60, 50
		scale        = 2
		panelPadding = 40
	)
	h := top + len(panels)*(ph+panelPadding) + bottom
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	black, grid := color.RGBA{0, 0, 0, 255}, color.RGBA{225, 225, 225, 255}
	drawText(img, (w-textWidth(title, 3))/2, 18, 3, black, title)
	xmax := 0.0
	for _, x := range xs {
		xmax = math.Max(xmax, x)
	}
	xstep := niceStep(xmax, 10)
	xmax = math.Ceil(xmax/xstep-0.01) * xstep // a last sample a moment past 10 min ends the axis at 10
	for pi, p := range panels {
		y0 := top + pi*(ph+panelPadding) + 20 // plot area top
		y1 := y0 + ph - 40                    // bottom
		x0, x1 := left, w-right
		ymax := 0.0
		for _, s := range p.series {
			for _, y := range s.ys {
				ymax = math.Max(ymax, y)
			}
		}
		if ymax == 0 {
			ymax = 1
		}
		ystep := niceStep(ymax*1.1, 6)
		ymax = math.Ceil(ymax*1.1/ystep) * ystep
		px := func(x float64) int { return x0 + int(math.Round(x/xmax*float64(x1-x0))) }
		py := func(y float64) int { return y1 - int(math.Round(y/ymax*float64(y1-y0))) }
		drawText(img, x0, y0-16, scale, black, p.title)
		for y := 0.0; y <= ymax+ystep/2; y += ystep {
			hline(img, x0, x1, py(y), grid)
			l := fmtTick(y)
			drawText(img, x0-8-textWidth(l, scale), py(y)-5, scale, black, l)
		}
		for x := 0.0; x <= xmax+xstep/2; x += xstep {
			vline(img, px(x), y0, y1, grid)
			l := fmtTick(x)
			drawText(img, px(x)-textWidth(l, scale)/2, y1+8, scale, black, l)
		}
		hline(img, x0, x1, y1, black)
		vline(img, x0, y0, y1, black)
		if pi == len(panels)-1 {
			l := "MINUTES SINCE START"
			drawText(img, (x0+x1-textWidth(l, scale))/2, y1+26, scale, black, l)
		}
		lx := x1
		for i := len(p.series) - 1; i >= 0; i-- {
			s := p.series[i]
			lx -= textWidth(s.name, scale) + 30
			draw.Draw(img, image.Rect(lx, y0-12, lx+16, y0-8), image.NewUniform(s.color), image.Point{}, draw.Src)
			drawText(img, lx+20, y0-16, scale, s.color, s.name)
		}
		for _, s := range p.series {
			for i := 1; i < len(s.ys) && i < len(xs); i++ {
				line(img, px(xs[i-1]), py(s.ys[i-1]), px(xs[i]), py(s.ys[i]), s.color)
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// niceStep is a 1, 2 or 5 × 10^k step giving about n ticks up to max.
func niceStep(max float64, n int) float64 {
	raw := max / float64(n)
	if raw <= 0 {
		return 1
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

func fmtTick(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x <= x1; x++ {
		img.Set(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	for y := y0; y <= y1; y++ {
		img.Set(x, y, c)
	}
}

// line draws a 2-pixel-thick segment (Bresenham, doubled vertically).
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := 1, 1
	if x0 > x1 {
		sx = -1
	}
	if y0 > y1 {
		sy = -1
	}
	e := dx + dy
	for {
		img.Set(x0, y0, c)
		img.Set(x0, y0+1, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
