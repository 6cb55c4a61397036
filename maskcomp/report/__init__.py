"""What a person reads: the pages' one look (htmlpage), labelled plots (plots) and the crop stage's report
(crop_page)."""
